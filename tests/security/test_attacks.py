"""Attacks a user's job on a neighbouring compute node could make, from a real second machine
on the lab bridge holding its own DHCP lease, against a lab whose victim node is `ready`.

Each attack is refused with the status the security model promises, logged with the
intruder's address, and changes nothing; the victim still reboots to ready afterwards.
"""

from __future__ import annotations

import json
import lzma
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest

from provisioner.boot.overlay import TOKEN_PATH
from provisioner.images.format import cpio
from provisioner.lab.netns import HttpAnswer
from provisioner.lab.observe import scheduler_state
from tests.security.conftest import CIRCUIT, CIRCUIT_NAME, DISCOVERY_LIMIT, AttackLab
from tests.security.intruder import Intruder, NoLease

pytestmark = pytest.mark.e2e


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.5)


def _victim_paths(attack: AttackLab) -> list[str]:
    mac = attack.victim.qemu.mac
    return [f"/boot/{mac}.ipxe", f"/boot/nodes/{mac}/overlay.cpio.xz",
            f"/boot/nodes/{mac}/install.ks"]


def test_another_nodes_boot_files_are_refused_without_a_side_effect(
        attack_lab: AttackLab) -> None:
    before = attack_lab.view()
    intruder = attack_lab.intruder()
    address = intruder.lease()
    for path in _victim_paths(attack_lab):
        for method in ("GET", "HEAD"):
            answer = intruder.boot(path, method)
            assert answer.status == 403, (method, path, answer)
    after = attack_lab.view()
    assert after.state == before.state == "ready"
    assert after.event_kinds() == before.event_kinds()  # no boot started, no token issued
    assert f"refused /boot/{attack_lab.victim.qemu.mac}.ipxe to {address}" in \
        attack_lab.appliance_log()


def test_only_boot_artifacts_are_served_from_the_image_directory(
        attack_lab: AttackLab) -> None:
    intruder = attack_lab.intruder()
    intruder.lease()
    base = "/boot/images/compute/1"
    assert intruder.boot(f"{base}/vmlinuz", "HEAD").status == 200
    assert intruder.boot(f"{base}/image.cpio.xz", "HEAD").status == 200
    for name in ("manifest.json", "build.log", "../../compute/current/build.log",
                 "%2e%2e/%2e%2e/lab.toml"):
        answer = intruder.boot(f"{base}/{name}")
        assert answer.status in (400, 404), (name, answer)


def test_a_forged_callback_for_another_node_is_refused(attack_lab: AttackLab) -> None:
    intruder = attack_lab.intruder()
    intruder.lease()
    body = {"mac": attack_lab.victim.qemu.mac, "token": "forged-" + "x" * 40,
            "image": "compute", "version": "1", "facts": {"cpus": 1, "memory_mib": 64}}
    before = attack_lab.view().event_kinds()
    answer = intruder.http("POST", f"{attack_lab.lab.state.api_url}/node/v1/booted", body=body)
    assert answer.status == 403 and b"only from its own address" in answer.body, answer
    # The step a systemd image's /init reports is bound to the node's address the same way.
    del body["facts"]
    answer = intruder.http("POST", f"{attack_lab.lab.state.api_url}/node/v1/init-started",
                           body=body)
    assert answer.status == 403 and b"only from its own address" in answer.body, answer
    assert attack_lab.view().state == "ready" and attack_lab.view().event_kinds() == before


def test_a_stranger_is_discovered_and_gets_nothing_until_accepted(
        attack_lab: AttackLab) -> None:
    stranger = attack_lab.intruder(registered=None)
    stranger.lease()
    node = attack_lab.nodes()[stranger.mac]
    assert node["state"] == "discovered"
    mac = stranger.mac
    script = stranger.boot(f"/boot/{mac}.ipxe")
    assert script.status == 200 and b"provisioner node accept" in script.body
    assert b"kernel" not in script.body.replace(b"kernel_args", b"")
    assert stranger.boot(f"/boot/nodes/{mac}/overlay.cpio.xz").status == 403
    assert attack_lab.nodes()[mac]["state"] == "discovered"  # asking changed nothing
    attack_lab.lab.cli("node", "accept", node["name"])
    assert attack_lab.nodes()[mac]["state"] == "registered"
    booting = stranger.boot(f"/boot/{mac}.ipxe")
    assert booting.status == 200 and b"/boot/images/compute/" in booting.body
    assert attack_lab.nodes()[mac]["state"] == "provisioning"
    overlay = stranger.boot(f"/boot/nodes/{mac}/overlay.cpio.xz")
    assert overlay.status == 200
    again = stranger.boot(f"/boot/nodes/{mac}/overlay.cpio.xz")  # a retry in the same boot
    assert again.status == 200 and again.body == overlay.body
    neighbour = attack_lab.intruder()
    neighbour.lease()
    assert neighbour.boot(f"/boot/nodes/{mac}/overlay.cpio.xz").status == 403
    _the_token_and_the_agent_credential_stay_with(attack_lab, stranger, neighbour,
                                                   node["name"], overlay.body)


def _the_token_and_the_agent_credential_stay_with(attack: AttackLab, owner: Intruder,
                                                  neighbour: Intruder, name: str,
                                                  overlay: bytes) -> None:
    """The one-boot token in `owner`'s overlay works only from `owner`'s address and once;
    the agent credential it earns polls only `owner`'s jobs."""
    token = _token(overlay)
    callback = f"{attack.lab.state.api_url}/node/v1/booted"
    body = {"mac": owner.mac, "token": token, "image": "compute", "version": "1",
            "facts": {"cpus": 1, "memory_mib": 64}}
    assert neighbour.http("POST", callback, body=body).status == 403  # stolen: wrong address
    accepted = _call_back_as_init_does(owner, callback, body)
    assert accepted.status == 200, accepted
    credential = accepted.json()["agent_token"]
    assert owner.http("POST", callback, body=body).status == 401  # used once
    assert owner.boot(f"/boot/nodes/{owner.mac}/overlay.cpio.xz").status == 409
    sched = attack.lab.state.scheduler_url
    eventually(lambda: scheduler_state(attack.lab, name) != "-", f"{name} in the scheduler")
    attack.lab.cli("scheduler", "drain", name, "--reason", "no agent: keep jobs off it")
    assert owner.http("POST", f"{sched}/sched/v1/nodes/{name}/poll",
                      token=credential).status in (200, 204)
    assert neighbour.http("POST", f"{sched}/sched/v1/nodes/{name}/poll",
                          token=credential[:-4] + "AAAA").status == 401
    victim = attack.victim.qemu.name
    assert owner.http("POST", f"{sched}/sched/v1/nodes/{victim}/poll",
                      token=credential).status == 401  # its credential is not the victim's


def _call_back_as_init_does(node: Intruder, url: str, body: dict[str, Any]) -> HttpAnswer:
    """POST the callback and, when nothing answers at all, try again, as the image's /init
    does (templates/image/init.sh.j2: backoff up to its deadline). Under heavy load a connect
    to the API has been seen to time out; any answer, refusal or not, is returned as is."""
    answer = node.http("POST", url, body=body, timeout=20)
    for delay in (1, 2, 4):
        if answer.status != 0:
            break
        time.sleep(delay)
        answer = node.http("POST", url, body=body, timeout=20)
    return answer


def _token(overlay: bytes) -> str:
    """The token the overlay carries: the cached xz part, then the uncompressed token cpio."""
    decompressor = lzma.LZMADecompressor()
    first = decompressor.decompress(overlay)
    entries = cpio.unpack(first) + cpio.unpack(decompressor.unused_data.lstrip(b"\0"))
    return next(e.data.decode() for e in entries if e.path == TOKEN_PATH)


def test_the_agent_routes_refuse_strangers_and_jobs_run_as_their_user(
        attack_lab: AttackLab) -> None:
    intruder = attack_lab.intruder()
    intruder.lease()
    sched = attack_lab.lab.state.scheduler_url
    victim = attack_lab.victim.qemu.name
    poll = f"{sched}/sched/v1/nodes/{victim}/poll"
    assert intruder.http("POST", poll).status == 401
    assert intruder.http("POST", poll, token="forged-" + "A" * 36).status == 401
    assert intruder.http("GET", f"{sched}/sched/v1/jobs").status == 401
    root_job = {"cpus": 1, "memory_mib": 64, "walltime": 60, "user": "", "as_root": True,
                "command": "id"}
    assert intruder.http("POST", f"{sched}/sched/v1/jobs", body=root_job).status == 401
    guessed = f"{sched}/sched/v1/jobs/{secrets.token_hex(8)}/done?exit_code=0"
    assert intruder.http("POST", guessed, body={"exit_code": 0, "output": ""}).status == 401
    as_root = _submit(attack_lab, "--as-root", "--command", "echo ran-as-$(id -un)")
    assert as_root["state"] == "completed" and "ran-as-root" in as_root["output"], as_root
    alice = _submit(attack_lab, "--user", "alice", "--command", "id")
    assert alice["state"] == "failed" and "no user 'alice'" in alice["output"], alice


def _submit(attack: AttackLab, *args: str) -> dict[str, Any]:
    """Submit a job through the CLI and wait until it has finished."""
    job = json.loads(attack.lab.cli("scheduler", "submit", *args, "--json").stdout)
    finished: dict[str, Any] = {}

    def done() -> bool:
        jobs = json.loads(attack.lab.cli("scheduler", "jobs", "--json").stdout)
        finished.update(next(j for j in jobs if j["id"] == job["id"]))
        return finished["state"] not in ("pending", "running")

    eventually(done, f"job {job['id']} finished", timeout=180)
    return finished


def test_option_82_from_a_client_that_is_no_relay_is_ignored(attack_lab: AttackLab) -> None:
    forger = attack_lab.intruder(registered=None)
    circuit = CIRCUIT.encode()
    sub_option = bytes([1, len(circuit)]) + circuit  # RFC 3046 2.0: sub-option 1, circuit id
    forger.lease("-x", f"0x52:{sub_option.hex()}")
    assert attack_lab.nodes()[forger.mac]["name"] != CIRCUIT_NAME
    assert "ignored option 82" in attack_lab.appliance_log()


def test_discovered_nodes_are_bounded(attack_lab: AttackLab) -> None:
    def discovered() -> list[dict[str, Any]]:
        return [n for n in attack_lab.nodes().values() if n["state"] == "discovered"]

    while len(discovered()) < DISCOVERY_LIMIT:
        attack_lab.intruder(registered=None).lease()
    extra = attack_lab.intruder(registered=None)
    with pytest.raises(NoLease):
        extra.lease(attempts=2)
    assert extra.mac not in attack_lab.nodes()
    assert "discovery is full" in attack_lab.appliance_log()
    attack_lab.lab.cli("node", "delete", discovered()[0]["name"])  # room for one more
    extra.lease()
    assert attack_lab.nodes()[extra.mac]["state"] == "discovered"


def test_the_victim_still_reboots_to_ready_after_the_attacks(attack_lab: AttackLab) -> None:
    intruder = attack_lab.intruder()
    intruder.lease()
    attack_lab.reboot_victim()
    assert attack_lab.view().state == "ready"
    assert "overlay_served" in attack_lab.view().event_kinds()
