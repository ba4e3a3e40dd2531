"""The image's /init (templates/image/init.sh.j2) run for real with busybox on this host:
syntax, the facts it gathers (parsed as JSON), and the callback POST with busybox wget against
a local HTTP server (accepted, refused token, retried after server errors, bounded)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from provisioner.render.environment import Renderer


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("init")
    renderer = Renderer()
    (out / "init").write_text(renderer.render("image/init.sh.j2", {"name": "compute"}))
    (out / "udhcpc.script").write_text(renderer.render("image/udhcpc.script.j2", {}))
    for template, name in (("image/init.sh.j2", "init"), ("image/udhcpc.script.j2",
                                                          "udhcpc.script")):
        (out / name).chmod(renderer.mode(template))
    return out


def run_lib(init_dir: Path, code: str, env: dict[str, str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Source /init as a library (PROVISIONER_INIT_LIB=1) and run `code` with busybox sh."""
    full_env = {"PATH": "/usr/bin:/bin", "PROVISIONER_INIT_LIB": "1", **(env or {})}
    return subprocess.run(["busybox", "sh", "-c", f". ./init; {code}"], cwd=init_dir, check=False,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", ["init", "udhcpc.script"])
def test_scripts_parse_with_busybox_sh(init_dir: Path, name: str) -> None:
    result = subprocess.run(["busybox", "sh", "-n", name], cwd=init_dir, capture_output=True,
                            text=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr


def test_facts_are_valid_json_matching_this_host(init_dir: Path) -> None:
    result = run_lib(init_dir, "facts_json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    assert facts["cpus"] == sum(1 for line in cpuinfo if line.startswith("processor"))
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(meminfo.split("MemTotal:")[1].split()[0])
    assert facts["memory_mib"] == total_kb // 1024
    nics = {n for n in os.listdir("/sys/class/net") if n != "lo"}
    assert {n["name"] for n in facts["nics"]} == nics
    for nic in facts["nics"]:
        assert nic["mac"] == Path(f"/sys/class/net/{nic['name']}/address").read_text().strip()
    for disk in facts["disks"]:
        sectors = int(Path(f"/sys/block/{disk['name']}/size").read_text())
        assert disk["size_bytes"] == sectors * 512


def test_json_strings_are_escaped(init_dir: Path) -> None:
    result = run_lib(init_dir, """json_str 'a"b\\c'""")
    assert json.loads(result.stdout) == 'a"b\\c'


class Callback:
    """A local stand-in for POST /node/v1/booted answering a scripted list of statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[dict[str, str], Any]] = []
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.paths.append(self.path)
                outer.requests.append((dict(self.headers), json.loads(body)))
                status = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                answer = b'{"state": "booted"}' if status == 200 else b'{"error": "x"}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/node/v1/booted"

    def __enter__(self) -> Callback:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def node_env() -> Iterator[dict[str, str]]:
    yield {"PROVISIONER_MAC": "52:54:00:00:00:01", "PROVISIONER_TOKEN": "tok-abc",
           "PROVISIONER_IMAGE": "compute", "PROVISIONER_IMAGE_VERSION": "3"}


def test_callback_accepted(init_dir: Path, node_env: dict[str, str]) -> None:
    with Callback([200]) as server:
        result = run_lib(init_dir, "post_callback",
                         {**node_env, "PROVISIONER_CALLBACK_URL": server.url})
    assert "provisioner-init: callback accepted" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 0
    headers, body = server.requests[0]
    assert headers["Content-Type"] == "application/json"
    assert body["mac"] == "52:54:00:00:00:01" and body["token"] == "tok-abc"
    assert body["image"] == "compute" and body["version"] == "3"
    assert set(body["facts"]) == {"cpus", "memory_mib", "disks", "nics"}


def test_refused_token_is_not_retried(init_dir: Path, node_env: dict[str, str]) -> None:
    with Callback([401]) as server:
        result = run_lib(init_dir, "post_callback",
                         {**node_env, "PROVISIONER_CALLBACK_URL": server.url})
    assert result.returncode == 1
    assert "provisioner-init: callback failed:" in result.stdout and "401" in result.stdout
    assert len(server.requests) == 1


def test_server_errors_are_retried_with_backoff(init_dir: Path, node_env: dict[str, str]) -> None:
    with Callback([500, 503, 200]) as server:
        result = run_lib(init_dir, "post_callback",
                         {**node_env, "PROVISIONER_CALLBACK_URL": server.url})
    assert "retrying in 1 s" in result.stdout and "retrying in 2 s" in result.stdout
    assert "provisioner-init: callback accepted" in result.stdout
    assert len(server.requests) == 3


def test_retries_are_bounded(init_dir: Path, node_env: dict[str, str]) -> None:
    with Callback([503]) as server:
        result = run_lib(init_dir, "post_callback",
                         {**node_env, "PROVISIONER_CALLBACK_URL": server.url,
                          "PROVISIONER_CALLBACK_DEADLINE": "3"}, timeout=20)
    assert result.returncode == 1
    assert "provisioner-init: callback failed:" in result.stdout
    assert "gave up after" in result.stdout
    assert 2 <= len(server.requests) <= 3


def test_unreachable_appliance_is_bounded(init_dir: Path, node_env: dict[str, str]) -> None:
    result = run_lib(init_dir, "post_callback",
                     {**node_env, "PROVISIONER_CALLBACK_URL": "http://127.0.0.1:9/x",
                      "PROVISIONER_CALLBACK_DEADLINE": "2"}, timeout=20)
    assert result.returncode == 1 and "callback failed:" in result.stdout


def test_missing_callback_url_says_so(init_dir: Path) -> None:
    result = run_lib(init_dir, "post_callback")
    assert "callback failed: PROVISIONER_CALLBACK_URL is not set" in result.stdout


def test_find_nic_prefers_the_mac_then_the_first_ethernet(init_dir: Path) -> None:
    ethernet = sorted(n for n in os.listdir("/sys/class/net")
                      if Path(f"/sys/class/net/{n}/type").read_text().strip() == "1")
    if not ethernet:
        pytest.skip("this host has no ethernet-type interface")
    last = ethernet[-1]
    mac = Path(f"/sys/class/net/{last}/address").read_text().strip()
    assert run_lib(init_dir, f"find_nic {mac.upper()}").stdout.strip() == last
    assert run_lib(init_dir, "find_nic 02:00:00:00:00:99").stdout.strip() in ethernet


@pytest.mark.netns
def test_network_up_with_a_real_dhcp_server(init_dir: Path, tmp_path: Path) -> None:
    """/init's network_up + udhcpc.script against busybox udhcpd, in namespaces."""
    from provisioner.lab.netns import NetnsPair

    with NetnsPair.create() as pair:
        net = pair.network
        conf = tmp_path / "udhcpd.conf"
        conf.write_text(
            f"interface {pair.server_if}\nstart {net.network_address + 100}\n"
            f"end {net.network_address + 110}\nlease_file {tmp_path}/leases\n"
            f"pidfile {tmp_path}/udhcpd.pid\noption subnet {net.netmask}\n"
            f"option router {pair.server_ip}\noption dns {pair.server_ip}\n"
            "option domain cluster.test\n")
        (tmp_path / "leases").touch()
        pair.spawn(pair.server_ns, ["busybox", "udhcpd", "-f", str(conf)])
        pair.run(pair.client_ns, ["ip", "addr", "flush", "dev", pair.client_if])
        mac = pair.run(pair.client_ns, ["cat", f"/sys/class/net/{pair.client_if}/address"])
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PROVISIONER_INIT_LIB": "1",
               "PROVISIONER_MAC": mac.stdout.strip(), "PROV_ETC": str(init_dir),
               "PROV_RUN": str(tmp_path / "run"),
               "PROV_RESOLV_CONF": str(tmp_path / "resolv.conf")}
        result = pair.run(pair.client_ns, ["busybox", "sh", "-c", ". ./init; network_up"],
                          timeout=120, cwd=init_dir, env=env)
        expected = f"provisioner-init: network up on {pair.client_if} ip={net.network_address}"
        assert expected.rsplit(".", 1)[0] in result.stdout, result.stdout + result.stderr
        lease = dict(line.split("=", 1) for line in
                     (tmp_path / "run/lease.env").read_text().splitlines())
        assert ipaddress.IPv4Address(lease["DHCP_IP"]) in net
        assert lease["DHCP_ROUTER"] == str(pair.server_ip)
        assert (tmp_path / "resolv.conf").read_text() == (
            f"search cluster.test\nnameserver {pair.server_ip}\n")
        routes = pair.run(pair.client_ns, ["ip", "-4", "route", "show", "default"]).stdout
        assert f"via {pair.server_ip}" in routes


def test_mounted_reads_proc_mounts(init_dir: Path) -> None:
    assert run_lib(init_dir, "mounted /proc").returncode == 0
    assert run_lib(init_dir, "mounted /no/such/mount").returncode == 1


def test_init_uses_only_applets_of_the_static_busybox() -> None:
    """The image's busybox is Debian's busybox-static: every command /init runs must be one of
    its applets (it has no `mountpoint`, for one)."""
    applets = set(subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                                 check=True, timeout=10).stdout.split())
    used = {"mount", "mkdir", "insmod", "tr", "cat", "sleep", "ip", "udhcpc", "sed", "grep",
            "date", "wget", "timeout", "setsid", "cttyhack", "hostname", "printf"}
    assert used <= applets
    script = Renderer().render("image/init.sh.j2", {})
    assert "mountpoint" not in script.replace("`mountpoint`", "")


def test_the_callback_goes_to_another_head_when_ours_is_gone(
        init_dir: Path, node_env: dict[str, str]) -> None:
    with Callback([200]) as server:
        result = run_lib(init_dir, "post_callback",
                         {**node_env, "PROVISIONER_CALLBACK_URL": "http://127.0.0.1:9/x",
                          "PROVISIONER_CALLBACK_FALLBACKS": server.url,
                          "PROVISIONER_CALLBACK_DEADLINE": "20"}, timeout=30)
    assert f"provisioner-init: callback accepted by {server.url}" in result.stdout, result.stdout
    assert "callback to http://127.0.0.1:9/x failed" in result.stdout
    assert "retrying in" not in result.stdout  # the other head answered in the first round
    assert result.returncode == 0 and len(server.requests) == 1
