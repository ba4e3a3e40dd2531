"""End to end with two heads (`lab up --heads 2 --store etcd`): faults under the heads.

- One etcd member of three is SIGKILLed while two QEMU nodes boot: the member every head
  talks to first (the first of [store] endpoints), or the raft leader (the cluster elects
  another). The heads' store calls go on to the next endpoint, the cluster keeps its quorum,
  and nothing shows: every node becomes ready and is
  handed to the scheduler exactly once, no node failed, no boot was retried, and both heads
  answer /healthz with no task down.
- A rolling reimage of two nodes (wave 1, to a new image version) is started through the API
  of the head that leads the election, and that head is SIGKILLed once the first node has been
  power-cycled. The other head takes the lead (within [ha] leader_ttl) and resumes the rollout
  once the dead runner's lock has expired (nodes/rollout.py LOCK_TTL, 30 s): every node ends on
  the new image, power-cycled once for the wave (one `reimaging` transition, one callback,
  one firmware banner on its console).

Both are `full` (PROVISIONER_FULL=1): several minutes of TCG boots each.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from provisioner.config import load_settings
from provisioner.ha.election import leaders
from provisioner.lab import procs
from provisioner.lab.lab import Lab, clean_console, lab_env
from provisioner.lab.observe import console_offset
from provisioner.lab.state import head_role
from provisioner.lab.storeview import NodeView, snapshot
from provisioner.nodes.progress import FINISHED
from provisioner.store import open_store
from tests.support.labs import MakeLab, boot, boot_and_wait, build_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.full]

ETCD_PORTS = (2379, 2479, 2579)  # LabOptions' (etcd_ports): the first is every head's first
ETCD_ROLES = ("etcd", "etcd1", "etcd2")  # their processes (lab.py start_etcd)
MID_BOOT_TIMEOUT = 180.0  # seconds for both nodes to get their DHCP answer (TCG)
ROLLOUT_LIMIT = 1500.0  # seconds for the whole rollout: two TCG boots and the lock's expiry
STEP_LIMIT = 300.0  # seconds for the first node to reach its power cycle


def admin(lab: Lab, head: int, method: str, path: str, body: Any = None) -> Any:
    answer = lab.ns.http(method, f"{lab.head_api_url(head)}/api/v1{path}", body=body,
                         token=lab.state.admin_token, timeout=30)
    assert answer.status in (200, 202), (path, answer)
    return answer.json()


def healthz(lab: Lab, head: int) -> Any:
    answer = lab.ns.http("GET", f"{lab.head_api_url(head)}/healthz", timeout=30)
    assert answer.status == 200, (head, answer)
    return answer.json()


def etcd_leads(lab: Lab, port: int) -> bool:
    """Whether the member on `port` leads the etcd cluster (its maintenance status)."""
    url = f"http://{lab.network.server_ip}:{port}/v3/maintenance/status"
    answer = lab.ns.http("POST", url, body={}, timeout=10).json()
    return str(answer["leader"]) == str(answer["header"]["member_id"])


def election_leader(lab: Lab) -> str:
    """The head that leads the once-only work (the `singletons` election)."""
    config = lab.state.config

    async def read() -> dict[str, str]:
        store = open_store(load_settings(config, env=lab_env()))
        try:
            return await leaders(store)
        finally:
            await store.close()

    return lab.ns.run(read, timeout=30)["singletons"].split(":", 1)[0]


def wait_all_acked(lab: Lab, macs: list[str]) -> None:
    deadline = time.monotonic() + MID_BOOT_TIMEOUT
    while time.monotonic() < deadline:
        views = snapshot(lab, macs)
        if all("dhcp_acked" in v.event_kinds() for v in views.values()):
            return
        time.sleep(0.2)
    raise AssertionError("the nodes did not all get their DHCP answer in time")


def kinds_since(view: NodeView, kind: str, since: float) -> list[Any]:
    return [e for e in view.events if e.kind == kind and e.at >= since]


@pytest.mark.parametrize("which", ["first", "leader"])
def test_nodes_become_ready_when_an_etcd_member_dies_mid_boot(make_lab: MakeLab,
                                                              which: str) -> None:
    lab = make_lab(discovery=True, store="etcd", heads=2)
    nodes = [boot(lab, "bios", register=True) for _ in range(2)]
    macs = [n.qemu.mac for n in nodes]
    wait_all_acked(lab, macs)
    leads = [etcd_leads(lab, port) for port in ETCD_PORTS]
    index = leads.index(True) if which == "leader" else 0
    member = lab.state.proc(ETCD_ROLES[index])
    assert member is not None
    procs.kill(member)
    began = time.monotonic()
    print(f"etcd member on port {ETCD_PORTS[index]} ({'the' if leads[index] else 'not the'} "
          f"raft leader, pid {member.pid}) SIGKILLed after both nodes had their DHCP answer")
    boot_and_wait(lab, nodes)
    print(f"both nodes ready {time.monotonic() - began:.0f} s after the member's kill")

    views = snapshot(lab, macs)
    for view in views.values():
        assert view.state == "ready", view.timeline()
        handed = [e for e in view.events if e.kind == "ready"
                  and e.detail.get("event") == "handed_off"]
        booted = kinds_since(view, "booted", 0.0)
        assert len(booted) == 1 and len(handed) == 1, view.timeline()
        assert not kinds_since(view, "failed", 0.0), view.timeline()
        assert not kinds_since(view, "power_cycled", 0.0), view.timeline()  # no boot retried
    for head in (1, 2):
        tasks = healthz(lab, head)["tasks"]
        restarts = {t["name"]: t["restarts"] for t in tasks if t["restarts"]}
        print(f"head{head}: {len(tasks)} tasks up, restarts {restarts or 'none'}")


def wait_first_cycled(lab: Lab, head: int, rollout: str, first: str) -> None:
    """Until the rollout has power-cycled `first` and waits for its callback."""
    deadline = time.monotonic() + STEP_LIMIT
    while time.monotonic() < deadline:
        status = admin(lab, head, "GET", f"/reimage/{rollout}")
        if status["nodes"][first]["step"] == "waiting_callback":
            return
        assert status["state"] == "running", status
        time.sleep(0.2)
    raise AssertionError(f"{first} was not power-cycled within {STEP_LIMIT:.0f} s")


def wait_rollout(lab: Lab, head: int, rollout: str, log: tuple[Path, int], killed: float
                 ) -> tuple[dict[str, Any], dict[str, float]]:
    """Until the rollout has finished (read from `head`); also when `head`'s log (from the
    offset at the kill) first said it leads the election and that it resumed the rollout, in
    seconds after `killed`."""
    marks = {"lead": f"election singletons: head{head}:", "resume": f"reimage {rollout}: - resumed"}
    seen: dict[str, float] = {}
    deadline = time.monotonic() + ROLLOUT_LIMIT
    while time.monotonic() < deadline:
        text = log[0].read_bytes()[log[1]:].decode(errors="replace")
        seen |= {name: time.monotonic() - killed for name, mark in marks.items()
                 if name not in seen and mark in text}
        answer = lab.ns.http("GET", f"{lab.head_api_url(head)}/api/v1/reimage/{rollout}",
                             token=lab.state.admin_token, timeout=30)
        if answer.status == 200 and answer.json()["state"] in FINISHED:
            return answer.json(), seen
        time.sleep(2)
    raise AssertionError(f"the rollout did not finish within {ROLLOUT_LIMIT:.0f} s")


def test_rollout_resumed_by_the_other_head_when_its_leader_dies(make_lab: MakeLab) -> None:
    lab = make_lab(discovery=True, store="etcd", heads=2)
    nodes = [boot(lab, "bios", register=True) for _ in range(2)]
    macs = [n.qemu.mac for n in nodes]
    boot_and_wait(lab, nodes)
    images = load_settings(lab.state.config, env=lab_env()).images_dir
    version = build_image(images, force=True)

    victim = election_leader(lab)
    number = int(victim.removeprefix("head"))
    survivor = 3 - number
    since, offsets = time.time(), {n.qemu.mac: console_offset(n) for n in nodes}
    names = [n.qemu.name for n in nodes]
    started = admin(lab, number, "POST", "/reimage",
                    {"nodes": names, "image": f"compute:{version}", "wave": 1})
    rollout = started["id"]
    wait_first_cycled(lab, number, rollout, names[0])
    survivor_proc = lab.state.proc(head_role(survivor))
    assert survivor_proc is not None
    log = Path(survivor_proc.log)
    offset = log.stat().st_size
    killed_proc = lab.kill_head(victim)
    killed = time.monotonic()
    print(f"{victim} (election leader, pid {killed_proc.pid}) SIGKILLed once {names[0]} was "
          "power-cycled")
    status, seen = wait_rollout(lab, survivor, rollout, (log, offset), killed)
    print(f"head{survivor} led (as its log says) {seen.get('lead', -1):.0f} s after the kill, "
          f"resumed rollout {rollout} {seen.get('resume', -1):.0f} s after it, and it finished "
          f"{time.monotonic() - killed:.0f} s after it: {status['state']}")

    assert status["state"] == "succeeded", status
    assert all(n["step"] == "done" for n in status["nodes"].values()), status
    views = snapshot(lab, macs)
    for view in views.values():
        assert view.state == "ready", view.timeline()
        booted = kinds_since(view, "booted", since)
        assert len(booted) == 1, view.timeline()  # one callback: one boot for the wave
        assert str(booted[0].detail["version"]) == version, view.timeline()
        assert len(kinds_since(view, "reimaging", since)) == 1, view.timeline()
        assert not kinds_since(view, "power_cycled", since), view.timeline()  # no retry
    for node in nodes:  # the firmware's banner: one reset of the machine since the start
        after = node.qemu.console.read_bytes()[offsets[node.qemu.mac]:]
        assert clean_console(after.decode(errors="replace")).count("SeaBIOS (version") == 1
