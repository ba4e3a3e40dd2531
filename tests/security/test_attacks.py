"""Attacks a user's job on a neighbouring compute node could make, from a real second machine
on the lab bridge holding its own DHCP lease, against a lab whose victim node is `ready`.

Each attack is refused with the status the security model promises, logged with the
intruder's address, and changes nothing; the victim still reboots to ready afterwards.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import AttackLab

pytestmark = pytest.mark.e2e


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
    answer = intruder.http("POST", f"{attack_lab.lab.state.api_url}/node/v1/booted", body=body)
    assert answer.status == 401, answer
    assert attack_lab.view().state == "ready"


def test_the_victim_still_reboots_to_ready_after_the_attacks(attack_lab: AttackLab) -> None:
    intruder = attack_lab.intruder()
    intruder.lease()
    attack_lab.reboot_victim()
    assert attack_lab.view().state == "ready"
    assert "overlay_served" in attack_lab.view().event_kinds()
