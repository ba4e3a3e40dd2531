"""Discovery against a real client: `provisioner serve` (discovery on, auto_accept off) in one
network namespace, busybox udhcpc in the other, sending option 82 itself (`-x 0x52:...`, as a
job on a compute node could). The forged option is ignored (the node is named from the pattern,
not the circuit), the discovered node's boot script, fetched from its leased address, waits for
acceptance, and `provisioner node accept` (the CLI, on the same data directory) makes it boot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from provisioner.images.format.catalog import ImageCatalog
from provisioner.lab.netns import NetnsPair
from tests.api.conftest import publish_image
from tests.dhcp.conftest import UDHCPC_SCRIPT

pytestmark = pytest.mark.netns

BOOT_PORT = 18081
API_PORT = 18098
CIRCUIT = b"\x01\x07sw1/p07"  # RFC 3046 sub-option 1, circuit-id "sw1/p07"
WAIT = 15.0

# GET a path from the boot plane with a given source address (the leased one, not the
# namespace's own), print the status and the body.
FETCH = r"""
import http.client, sys
host, port, source, path = sys.argv[1:5]
conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
conn.request("GET", path)
reply = conn.getresponse()
print(reply.status)
print(reply.read().decode(errors="replace"))
"""


@dataclass
class Lab:
    pair: NetnsPair
    base: Path
    data_dir: Path
    server_log: Path

    def log(self) -> str:
        return self.server_log.read_text(errors="replace")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PROVISIONER_DATA_DIR": str(self.data_dir),
               "PROVISIONER_CONFIG": str(self.base / "provisioner.toml")}
        return subprocess.run([sys.executable, "-m", "provisioner", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    def fetch(self, source: str, path: str) -> tuple[int, str]:
        result = self.pair.run(self.pair.client_ns, [
            sys.executable, "-c", FETCH, str(self.pair.server_ip), str(BOOT_PORT), source, path],
            timeout=30)
        assert result.returncode == 0, f"{result.stderr}\n{self.log()[-4000:]}"
        status, _, body = result.stdout.partition("\n")
        return int(status), body


def _config(pair: NetnsPair) -> str:
    net = pair.network
    return f"""
[dhcp]
mode = "full"
interface = "{pair.server_if}"
discovery = true
circuit_names = ["sw1/p07=rack1-n07"]

[[dhcp.subnets]]
network = "{net}"
pool_start = "{net[20]}"
pool_end = "{net[250]}"

[tftp]
listen = "{pair.server_ip}"

[boot]
port = {BOOT_PORT}

[api]
listen = "127.0.0.1"
port = {API_PORT}

[handoff]
kind = "none"

[defaults]
image = "compute"
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "busybox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (Debian: iproute2, busybox-static)")
    base = tmp_path_factory.mktemp("discovery-netns")
    data_dir = base / "data"
    publish_image(ImageCatalog(data_dir / "bootimages"), "compute")
    pair = NetnsPair.create()
    try:
        (base / "provisioner.toml").write_text(_config(pair))
        (base / "udhcpc.sh").write_text(UDHCPC_SCRIPT)
        (base / "udhcpc.sh").chmod(0o755)
        server_log = base / "serve.log"
        env = {**os.environ, "PROVISIONER_DATA_DIR": str(data_dir),
               "PROVISIONER_CONFIG": str(base / "provisioner.toml"), "PYTHONUNBUFFERED": "1"}
        with server_log.open("w") as log:
            pair.spawn(pair.server_ns, [sys.executable, "-m", "provisioner", "serve",
                                        "--log-level", "debug"], log=log, env=env)
        found = Lab(pair, base, data_dir, server_log)
        _until(lambda: "dhcp: full mode" in found.log() and "serving the API" in found.log(),
               "the appliance started", found)
        yield found
    finally:
        pair.close()


def _until(check: Any, what: str, lab: Lab, limit: float = WAIT) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {limit:.0f} s: {what}\n--- server ---\n{lab.log()[-6000:]}")
        time.sleep(0.1)


def test_a_discovered_node_waits_for_accept_and_its_forged_option_82_is_ignored(
        lab: Lab) -> None:
    mac = "02:5e:00:00:11:01"
    pair = lab.pair
    assert pair.run(pair.client_ns, ["ip", "link", "set", "dev", pair.client_if, "address",
                                     mac]).returncode == 0
    events = lab.base / "udhcpc.events"
    got = pair.run(pair.client_ns, [
        "env", f"UDHCPC_EVENTS={events}", "busybox", "udhcpc", "-f", "-q", "-n", "-i",
        pair.client_if, "-t", "5", "-T", "1", "-s", str(lab.base / "udhcpc.sh"),
        "-x", f"0x52:{CIRCUIT.hex()}"], timeout=60)
    assert got.returncode == 0, f"{got.stdout}\n{got.stderr}\n{lab.log()[-4000:]}"
    bound = [line.split()[1] for line in events.read_text().splitlines()
             if line.startswith("bound ")]
    assert bound, events.read_text()
    ip = bound[-1]

    listed = lab.cli("node", "list", "--state", "discovered", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    # Named from the pattern: the circuit-id came from the client, not from a relay.
    assert [(r["mac"], r["name"], r["ip"]) for r in rows] == [(mac, "node001", ip)]
    assert "ignored option 82 (relay agent information)" in lab.log()
    assert f"MAC {mac}" in lab.log()

    status, script = lab.fetch(ip, f"/boot/{mac}.ipxe")
    assert status == 200 and "discovered, waiting for `provisioner node accept node001`" in script
    assert "prov-kernel" not in script
    status, refused = lab.fetch(ip, f"/boot/nodes/{mac}/overlay.cpio.xz")
    assert status == 403 and "provisioner node accept node001" in refused

    accepted = lab.cli("node", "accept", "node001")
    assert accepted.returncode == 0, accepted.stderr
    assert "accepted node node001" in accepted.stdout

    def boots() -> str | None:
        code, text = lab.fetch(ip, f"/boot/{mac}.ipxe")
        return text if code == 200 and "prov-kernel" in text else None

    script = _until(boots, "the accepted node's script boots its image", lab)
    assert "/boot/images/compute/1/vmlinuz" in script
    shown = lab.cli("node", "show", "node001", "--json")
    assert json.loads(shown.stdout)["state"] == "provisioning"
    pair.run(pair.client_ns, ["ip", "addr", "del", f"{ip}/{pair.network.prefixlen}", "dev",
                              pair.client_if])
