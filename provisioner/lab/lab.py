"""The lab: a namespace with a bridge, the appliance and the scheduler inside it, QEMU nodes on
taps, all started detached and recorded in DATA_DIR/lab/state.json so that `lab status` and
`lab down` work from any later process.

Helpers run the CLI inside the namespace (`ip netns exec NS python -m provisioner --config
LAB.toml ...`): the same code path a user would take, for either store backend.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from provisioner.errors import ConfigError
from provisioner.lab import procs
from provisioner.lab.labconfig import LabOptions, head_config, head_ip, lab_env, render_config
from provisioner.lab.netns import LabNetwork, Namespace, namespace_exists
from provisioner.lab.procs import Proc
from provisioner.lab.qemu import QemuNode, lab_mac
from provisioner.lab.state import LabNode, LabState, head_role, load_state
from provisioner.lab.storeview import create_admin_token

__all__ = ["Lab", "down", "lab_env", "read_console", "tail"]

Say = Callable[[str], None]
START_TIMEOUT = 60.0  # seconds for the appliance, the scheduler or etcd to answer


_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][0-9A-Za-z]|[=>78])|\r|\x08|\x00")


def clean_console(text: str) -> str:
    """A console log as text: terminal escapes (SeaBIOS's serial graphics adapter, iPXE's
    colours), carriage returns and backspaces removed."""
    return _ESCAPES.sub("", text)


def read_console(path: Path | str) -> str:
    try:
        return clean_console(Path(path).read_bytes().decode(errors="replace"))
    except OSError:
        return ""


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (the lab settings hold the scheduler's token)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def tail(path: Path | str, lines: int = 30) -> str:
    text = read_console(path)
    if not text:
        return f"({path}: nothing written)"
    return "\n".join(text.splitlines()[-lines:])


class Lab:
    def __init__(self, state: LabState) -> None:
        self.state = state
        self._ns: Namespace | None = None

    # -- access -----------------------------------------------------------------------------

    @property
    def network(self) -> LabNetwork:
        return LabNetwork(self.state.namespace, self.state.bridge, self.state.address)

    @property
    def ns(self) -> Namespace:
        if self._ns is None:
            self._ns = Namespace(self.state.namespace)
        return self._ns

    @classmethod
    def load(cls, root: Path) -> Lab | None:
        state = load_state(root)
        return cls(state) if state is not None else None

    def argv(self, *args: str) -> list[str]:
        """The provisioner CLI against the lab's settings."""
        return [sys.executable, "-m", "provisioner", "--config", str(self.state.config), *args]

    def cli(self, *args: str, timeout: float = 120.0, inside: bool = True,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = self.argv(*args)
        if inside:
            argv = self.network.command(argv)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                check=False, env=lab_env())
        if check and result.returncode != 0:
            raise ConfigError(f"`provisioner {' '.join(args)}` failed ({result.returncode}): "
                              f"{(result.stderr or result.stdout).strip()[-2000:]}")
        return result

    # -- bring up ---------------------------------------------------------------------------

    @classmethod
    def create(cls, options: LabOptions, *, say: Say = print) -> Lab:
        """Namespace, bridge, settings, (etcd), admin token, appliance, scheduler."""
        previous = load_state(options.root)
        if previous is not None or namespace_exists(options.namespace):
            raise ConfigError(f"a lab is up already (namespace {options.namespace}); run "
                              "`provisioner lab down` first")
        shutil.rmtree(options.data_dir, ignore_errors=True)  # a fresh store for every lab
        shutil.rmtree(options.root / "etcd", ignore_errors=True)
        shutil.rmtree(options.root / "nodes", ignore_errors=True)
        options.root.mkdir(parents=True, exist_ok=True)
        if options.heads > 1 and options.store != "etcd":
            raise ConfigError("several lab heads share one store: use --store etcd")
        if not options.scheduler_token:
            options = dataclasses.replace(options, scheduler_token=secrets.token_urlsafe(24))
        for head in range(1, options.heads + 1):
            write_private(options.head_config(head), render_config(options, head))
        state = LabState(options.root, options.namespace, options.bridge, options.address,
                         options.config_path, options.store,
                         api_url=options.url(options.api_port),
                         boot_url=options.url(options.boot_port),
                         scheduler_url=options.url(options.scheduler_port),
                         scheduler_token=options.scheduler_token, image=options.image,
                         heads=options.heads)
        state.save()  # before anything starts: `lab down` can clean up a half-made lab
        lab = cls(state)
        try:
            options.network.create()
            say(f"lab: namespace {options.namespace}, bridge {options.bridge} "
                f"{options.address}")
            for head in range(2, options.heads + 1):
                options.network.add_address(options.head_ip(head))
            if options.store == "etcd":
                lab.start_etcd(options.etcd_ports)
            lab.create_admin_token()
            for head in range(1, options.heads + 1):
                lab.start_appliance(head)
                say(f"lab: head {head} up, API {options.url(options.api_port, head)} "
                    f"(log {options.root}/{head_role(head)}.log)")
            if lab.scheduler_available():
                lab.start_scheduler()
                say(f"lab: scheduler up at {state.scheduler_url}")
        except BaseException:
            lab.down(say=lambda _: None)
            raise
        return lab

    def _wait_http(self, role: str, url: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        proc = self.state.proc(role)
        while time.monotonic() < deadline:
            if proc is not None and not procs.alive(proc):
                raise ConfigError(f"lab: {role} exited at start; its log {proc.log}:\n"
                                  f"{tail(proc.log)}")
            if self.ns.http("GET", url, timeout=2).status != 0:
                return
            time.sleep(0.2)
        log = proc.log if proc else "-"
        raise ConfigError(f"lab: {role} did not answer {url} within {timeout:.0f} s; log {log}:"
                          f"\n{tail(log)}")

    def _spawn(self, role: str, argv: Sequence[str]) -> Proc:
        proc = procs.spawn(role, self.network.command(argv), self.state.root / f"{role}.log",
                           env=lab_env())
        self.state.replace_proc(proc)
        self.state.save()
        return proc

    def start_etcd(self, ports: Sequence[int]) -> None:
        """One etcd member per client port (peer port: client port + 1), as one cluster."""
        ip = self.network.server_ip
        names = [f"lab{i}" if i else "lab" for i in range(len(ports))]
        cluster = ",".join(f"{name}=http://127.0.0.1:{port + 1}"
                           for name, port in zip(names, ports, strict=True))
        for name, port in zip(names, ports, strict=True):
            self._spawn(name.replace("lab", "etcd"), [
                "etcd", "--name", name, "--data-dir", str(self.state.root / "etcd" / name),
                "--listen-client-urls", f"http://{ip}:{port}",
                "--advertise-client-urls", f"http://{ip}:{port}",
                "--listen-peer-urls", f"http://127.0.0.1:{port + 1}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{port + 1}",
                "--initial-cluster", cluster, "--log-level", "warn"])
        for name, port in zip(names, ports, strict=True):
            self._wait_http(name.replace("lab", "etcd"), f"http://{ip}:{port}/health")

    def create_admin_token(self) -> None:
        """An admin API token for the lab's user, created in the store before the appliance
        starts (API auth is on in the lab, as in production)."""
        self.state.admin_token = create_admin_token(self)
        self.state.save()

    def start_appliance(self, head: int = 1) -> None:
        config = head_config(self.state.root, head)
        self._spawn(head_role(head), [sys.executable, "-m", "provisioner", "--config",
                                      str(config), "serve"])
        self._wait_http(head_role(head), f"{self.head_api_url(head)}/healthz")

    def head_api_url(self, head: int) -> str:
        """Head `head`'s API (the lab's API URL on that head's address)."""
        return self.state.api_url.replace(self.network.server_ip,
                                          head_ip(self.network, head), 1)

    def kill_head(self, name: str) -> Proc:
        """SIGKILL head NAME ("head1", "head2" ...), as a crash would; returns its process."""
        proc = self.state.head(name)
        procs.kill(proc)
        return proc

    def restart_appliance(self, *, kill: bool = True) -> float:
        """Stop the appliance (SIGKILL by default: a crash) and start it again; returns the
        seconds it was away."""
        began = time.monotonic()
        proc = self.state.proc("appliance")
        if proc is not None:
            (procs.kill if kill else procs.stop)(proc)
        self.start_appliance()
        return time.monotonic() - began

    def scheduler_available(self) -> bool:
        result = subprocess.run(self.argv("scheduler", "serve", "--help"), capture_output=True,
                                timeout=60, check=False, env=lab_env())
        return result.returncode == 0

    def start_scheduler(self) -> None:
        self._spawn("scheduler", self.argv("scheduler", "serve"))
        self._wait_http("scheduler", f"{self.state.scheduler_url}/healthz")

    # -- nodes ------------------------------------------------------------------------------

    def new_node(self, firmware: str, *, memory_mib: int = 1024, accel: str = "tcg"
                 ) -> LabNode:
        index = len(self.state.nodes) + 1
        name = f"node{index:03}"
        nodes_dir = self.state.root / "nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        qemu = QemuNode(name, lab_mac(index), firmware, f"tap{index}", nodes_dir / f"{name}.qmp",
                        nodes_dir / f"{name}.console.log",
                        nodes_dir / f"{name}.vars" if firmware == "uefi" else None,
                        memory_mib=memory_mib, accel=accel)
        node = LabNode(qemu)
        self.state.nodes.append(node)
        self.state.save()
        return node

    def register(self, node: LabNode, *, ip: str | None = None) -> None:
        """Add the node to the inventory ahead of its boot (a known MAC), with its QMP socket
        as power address and, with `ip`, a reserved address (one slurm.conf can name)."""
        q = node.qemu
        self.cli("node", "add", q.mac, "--name", q.name, "--firmware", q.firmware,
                 "--set", f"power_address={q.qmp}", *(["--ip", ip] if ip else []))

    def start_node(self, node: LabNode) -> None:
        q = node.qemu
        q.prepare()
        self.network.add_tap(q.tap)
        node.proc = procs.spawn(q.name, self.network.command(q.argv()),
                                q.console.with_name(f"{q.name}.qemu.log"))
        self.state.save()

    def stop_node(self, node: LabNode) -> None:
        if node.proc is not None:
            procs.stop(node.proc, grace=5)

    # -- tear down --------------------------------------------------------------------------

    def down(self, *, say: Say = print) -> None:
        """Stop everything by PID, remove the namespace and the state file. Idempotent."""
        for node in self.state.nodes:
            if node.proc is not None:
                procs.stop(node.proc, grace=5)
        roles = ["scheduler", *(head_role(h) for h in range(1, self.state.heads + 1))]
        roles += [p.role for p in self.state.procs if p.role.startswith("etcd")]
        for role in roles:
            proc = self.state.proc(role)
            if proc is not None:
                procs.stop(proc)
                say(f"lab: stopped {role} (pid {proc.pid})")
        if self._ns is not None:
            self._ns.close()
            self._ns = None
        self.network.destroy()
        self.state.path.unlink(missing_ok=True)
        say(f"lab: namespace {self.state.namespace} removed; logs kept in {self.state.root}")


def down(root: Path, namespace: str, *, say: Say = print) -> bool:
    """`lab down`: by the state file when there is one; a namespace left without state is
    removed too. Returns whether there was anything to take down."""
    lab = Lab.load(root)
    if lab is not None:
        lab.down(say=say)
        return True
    if namespace_exists(namespace):
        LabNetwork(namespace).destroy()
        say(f"lab: removed namespace {namespace} (no state file)")
        return True
    return False
