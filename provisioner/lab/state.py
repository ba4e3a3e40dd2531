"""The lab's state file, DATA_DIR/lab/state.json: what `lab status` and `lab down` need from
the `lab up` that ran before them (namespace, processes by PID, nodes, URLs, admin token).

Written atomically (temporary file + rename) with mode 0600: it holds an admin API token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import ConfigError
from provisioner.lab.procs import Proc
from provisioner.lab.qemu import QemuNode


@dataclass
class LabNode:
    qemu: QemuNode
    proc: Proc | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.qemu.to_dict(), "proc": self.proc.to_dict() if self.proc else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabNode:
        proc = data.get("proc")
        return cls(QemuNode.from_dict(data), Proc.from_dict(proc) if proc else None)


@dataclass
class LabState:
    root: Path
    namespace: str
    bridge: str
    address: str
    config: Path
    store: str
    api_url: str = ""
    boot_url: str = ""
    scheduler_url: str = ""
    admin_token: str = ""
    scheduler_token: str = ""
    image: str = ""
    procs: list[Proc] = field(default_factory=list)  # appliance(s), scheduler, etcd(s)
    nodes: list[LabNode] = field(default_factory=list)
    heads: int = 1  # appliances: head N runs as role head_role(N)

    @property
    def path(self) -> Path:
        return state_path(self.root)

    def proc(self, role: str) -> Proc | None:
        return next((p for p in self.procs if p.role == role), None)

    def replace_proc(self, proc: Proc) -> None:
        self.procs = [p for p in self.procs if p.role != proc.role] + [proc]

    def head(self, name: str) -> Proc:
        """The process of head NAME ("head1", "head2" ...)."""
        names = {f"head{n}": head_role(n) for n in range(1, self.heads + 1)}
        proc = self.proc(names[name]) if name in names else None
        if proc is None:
            raise ConfigError(f"no lab head {name!r}; heads: {', '.join(names)}")
        return proc

    def node(self, ref: str) -> LabNode:
        for node in self.nodes:
            if ref in (node.qemu.name, node.qemu.mac):
                return node
        known = ", ".join(n.qemu.name for n in self.nodes) or "none"
        raise ConfigError(f"no lab node {ref!r}; nodes: {known}")

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "namespace": self.namespace, "bridge": self.bridge,
                "address": self.address, "config": str(self.config), "store": self.store,
                "api_url": self.api_url, "boot_url": self.boot_url,
                "scheduler_url": self.scheduler_url, "admin_token": self.admin_token,
                "scheduler_token": self.scheduler_token, "image": self.image,
                "procs": [p.to_dict() for p in self.procs],
                "nodes": [n.to_dict() for n in self.nodes], "heads": self.heads}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabState:
        return cls(Path(data["root"]), data["namespace"], data["bridge"], data["address"],
                   Path(data["config"]), data["store"], data.get("api_url", ""),
                   data.get("boot_url", ""), data.get("scheduler_url", ""),
                   data.get("admin_token", ""), data.get("scheduler_token", ""),
                   data.get("image", ""),
                   [Proc.from_dict(p) for p in data.get("procs", [])],
                   [LabNode.from_dict(n) for n in data.get("nodes", [])],
                   int(data.get("heads", 1)))

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".state.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self.to_dict(), out, indent=2)
        tmp.replace(self.path)


def head_role(head: int) -> str:
    """The process role of head `head` (1: "appliance", as a one-head lab calls it)."""
    return "appliance" if head == 1 else f"appliance{head}"


def state_path(root: Path) -> Path:
    return root / "state.json"


def load_state(root: Path) -> LabState | None:
    """The saved state, or None when no lab was brought up under `root`."""
    path = state_path(root)
    try:
        return LabState.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: unreadable lab state ({exc}); remove it after checking "
                          "`ip netns list` and `ps` for leftovers") from None
