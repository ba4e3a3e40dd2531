"""End to end: the Debian bookworm image of templates/kickstart/debian.ks.j2 (systemd, udev,
OpenSSH) boots diskless in QEMU (BIOS) and is `ready` only once its services are up: /init
reports init_started before it execs systemd, the image's provisioner-booted.service calls back
after multi-user.target, sshd answers on port 22, the serial console shows a login prompt, and
the node agent (a unit of the image) runs a job of the scheduler.

The image is built once into a catalog kept outside the repository (PROVISIONER_E2E_CACHE,
default /var/cache/provisioner/e2e) with its debootstrap tarball and .deb files: a run whose
kickstart, templates and kernel are unchanged reuses the built version (the builder compares
its inputs' digest), so only the first run on a machine pays the build (about 4 min here).

Run it with `PROVISIONER_FULL=1 pytest tests/e2e/test_debian.py` (marked `full`).
"""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.lab.lab import Lab
from provisioner.lab.labconfig import LabOptions
from provisioner.lab.observe import scheduler_state
from provisioner.lab.state import LabNode
from provisioner.lab.storeview import NodeView, snapshot
from tests.support.labs import (
    CACHE,
    boot_and_wait,
    cached_debian_image,
    console,
    dump,
    run_job,
)

#: `full`: on a machine without the cached image the build adds 4-7 minutes, more than CI's
#: budget; run it with PROVISIONER_FULL=1 (bench/boot.py boots the same image).
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.full]

LOGIN_TIMEOUT = 180.0  # seconds after ready for the serial getty's prompt (TCG, shared cores)


@pytest.fixture(scope="module")
def debian_images() -> Path:
    return cached_debian_image("debian")


@pytest.fixture
def debian_lab(request: pytest.FixtureRequest, tmp_path: Path,
               debian_images: Path) -> Iterator[Lab]:
    options = LabOptions(tmp_path / "lab", namespace=f"pv-deb-{secrets.token_hex(3)}",
                         images=debian_images, cache=CACHE, image="debian", discovery=False)
    lab = Lab.create(options, say=print)
    yield lab
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        print(dump(lab))
    lab.down(say=print)


def order_of(view: NodeView, kinds: list[str]) -> list[float]:
    """When each of `kinds` last happened (the boot under test)."""
    times = []
    for kind in kinds:
        found = [e.at for e in view.events if e.kind == kind]
        assert found, f"no {kind} on the timeline:\n{view.timeline()}"
        times.append(found[-1])
    return times


def ssh_banner(address: str) -> bytes:
    with socket.create_connection((address, 22), timeout=30) as conn:
        conn.settimeout(30)
        return conn.recv(256)


def wait_for_login_prompt(node: LabNode) -> str:
    deadline = time.monotonic() + LOGIN_TIMEOUT
    while time.monotonic() < deadline:
        text = console(node)
        if re.search(r"\S+ login: ", text):
            return text
        time.sleep(2)
    raise AssertionError(f"no login prompt on ttyS0 in {LOGIN_TIMEOUT:.0f} s:\n"
                         f"{console(node)[-3000:]}")


def test_debian_node_is_ready_after_multi_user_and_runs_a_job(debian_lab: Lab) -> None:
    lab = debian_lab
    began = time.monotonic()
    node = lab.new_node("bios", memory_mib=1536)
    lab.register(node)
    lab.start_node(node)
    boot_and_wait(lab, [node])
    print(f"debian node ready {time.monotonic() - began:.0f} s after power on")

    view = snapshot(lab, [node.qemu.mac])[node.qemu.mac]
    served, init, booted, ready = order_of(view, ["overlay_served", "init_started", "booted",
                                                  "ready"])
    assert served <= init < booted <= ready, view.timeline()
    print(f"phases: kernel+image {init - served:.1f} s, services {booted - init:.1f} s, "
          f"handoff {ready - booted:.1f} s")
    text = console(node)
    assert "provisioner-init: init-started reported" in text
    # The callback came from the unit, once systemd had reached multi-user.target.
    reached = text.find("Reached target multi-user.target")
    assert reached >= 0, text[-3000:]
    assert "provisioner-init: callback accepted" in text[reached:], text[-3000:]
    assert view.node is not None and view.ip is not None
    assert scheduler_state(lab, view.node.name) == "idle"

    banner = lab.ns.call(lambda: ssh_banner(str(view.ip)))
    assert banner.startswith(b"SSH-2.0-OpenSSH"), banner

    job = run_job(lab, "echo job-ran-on-$(hostname); systemctl is-active "
                       "provisioner-agent.service provisioner-booted.service; "
                       "stat -c '%n %a %U' /run/provisioner/agent.token /etc/provisioner/token "
                       "/etc/provisioner/node.env")
    assert job["state"] == "completed" and job["exit_code"] == 0, repr(job)
    output = job["output"]
    assert f"job-ran-on-{node.qemu.name}" in output
    assert output.count("active") >= 2, output
    # The agent's credential and the overlay's token: root's alone, as in a busybox image.
    assert "/run/provisioner/agent.token 600 root" in output, output
    assert "/etc/provisioner/token 600 root" in output, output

    wait_for_login_prompt(node)
