"""One lab for the attack suite: a victim node booted to `ready`, and intruders on its bridge.

The lab is built once per module (a boot costs tens of seconds under TCG); each attack test
uses a fresh intruder and leaves the victim as it found it, and the suite ends by power
cycling the victim and checking that it still boots to ready.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from provisioner.lab.lab import Lab
from provisioner.lab.labconfig import LabOptions
from provisioner.lab.state import LabNode
from provisioner.lab.storeview import NodeView, snapshot
from tests.security.intruder import Intruder
from tests.support.labs import CACHE, boot, boot_and_wait, dump

DISCOVERY_LIMIT = 3
CIRCUIT, CIRCUIT_NAME = "rack1-port7", "rack1-n07"  # option 82 names, trusted from relays only


@dataclass
class AttackLab:
    lab: Lab
    victim: LabNode
    work: Path
    intruders: list[Intruder] = field(default_factory=list)

    def intruder(self, *, registered: str | None = "intruder") -> Intruder:
        """A machine on the bridge with its own MAC; `registered`: a known node of that name
        (it then holds an ordinary lease, like a neighbouring compute node)."""
        mac = "52:54:00:ee:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(2))
        if registered is not None:
            name = f"{registered}-{mac[-5:].replace(':', '')}"
            self.lab.cli("node", "add", mac, "--name", name)
        intruder = Intruder(self.lab, mac, self.work / f"intruder{len(self.intruders)}")
        self.intruders.append(intruder)
        return intruder

    def view(self, node: LabNode | None = None) -> NodeView:
        mac = (node or self.victim).qemu.mac
        return snapshot(self.lab, [mac])[mac]

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Every node the appliance knows, by MAC, as `provisioner node list --json` shows it."""
        listed = json.loads(self.lab.cli("node", "list", "--json").stdout)
        return {n["mac"]: n for n in listed}

    def appliance_log(self) -> str:
        proc = self.lab.state.proc("appliance")
        assert proc is not None
        return Path(proc.log).read_text(errors="replace")

    def reboot_victim(self) -> None:
        """Power-cycle the victim through its BMC (the lab's QMP driver), as an admin would,
        and wait until it is ready again."""
        console = self.victim.qemu.console
        offset = len(console.read_bytes()) if console.exists() else 0
        since = time.time()
        self.lab.cli("node", "power", self.victim.qemu.name, "cycle")
        boot_and_wait(self.lab, [self.victim], offsets={self.victim.qemu.mac: offset},
                      since=since)


@pytest.fixture(scope="module")
def attack_lab(tmp_path_factory: pytest.TempPathFactory, e2e_images: Path
               ) -> Iterator[AttackLab]:
    root = tmp_path_factory.mktemp("attack")
    options = LabOptions(root / "lab", namespace=f"pv-sec-{secrets.token_hex(3)}",
                         images=e2e_images, cache=CACHE, discovery=True, auto_accept=False,
                         discovery_limit=DISCOVERY_LIMIT,
                         dhcp_extra=f'circuit_names = ["{CIRCUIT}={CIRCUIT_NAME}"]')
    lab = Lab.create(options, say=print)
    intruders: list[Intruder] = []
    try:
        victim = boot(lab, "bios", register=True)
        boot_and_wait(lab, [victim])
        yield AttackLab(lab, victim, root / "work", intruders)
    except BaseException:
        print(dump(lab))
        raise
    finally:
        for intruder in intruders:
            intruder.close()
        lab.down(say=print)


@pytest.fixture(autouse=True)
def _dump_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "attack_lab" in request.fixturenames:
        attack: AttackLab = request.getfixturevalue("attack_lab")
        print(dump(attack.lab))
