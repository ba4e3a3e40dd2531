"""The shipped compute kickstart renders to text the kickstart parser accepts, with variables
given as lists (from code) or as strings (from `--var k=v`)."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.images.build.kickstart import parse
from provisioner.render.environment import Renderer

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKickstart admin@head"


@pytest.mark.parametrize(("variables", "modules", "services", "keys"), [
    ({"name": "compute"}, ("virtio_net",), ("syslogd",), 0),
    ({"name": "c2", "modules": "virtio_net e1000", "services": "syslogd,crond",
      "ssh_keys": KEY}, ("virtio_net", "e1000"), ("syslogd", "crond"), 1),
    ({"name": "c3", "modules": ["virtio_net", "e1000"], "ssh_keys": [KEY, KEY],
      "root_password_hash": "$6$salt$hash"}, ("virtio_net", "e1000"), ("syslogd",), 2),
])
def test_compute_kickstart_parses(variables: dict[str, Any], modules: tuple[str, ...],
                                  services: tuple[str, ...], keys: int) -> None:
    text = Renderer().render("kickstart/compute.ks.j2", variables, node="image")
    kickstart = parse(text, source="kickstart/compute.ks.j2")
    assert kickstart.base.kind == "busybox"
    assert kickstart.kernel == "linux-image-cloud-amd64"
    assert kickstart.modules == modules
    assert kickstart.services_enabled == services
    assert len(kickstart.sshkeys) == keys
    assert (kickstart.rootpw is not None) == ("root_password_hash" in variables)
    assert f"{variables['name']}: diskless compute image" in kickstart.posts[0].body


@pytest.mark.parametrize(("variables", "extra", "mirror"), [
    ({"name": "debian"}, (), None),
    ({"name": "d2", "packages": "htop slurmd", "mirror": "http://mirror.example/debian"},
     ("htop", "slurmd"), "http://mirror.example/debian"),
    ({"name": "d3", "packages": ["htop"], "ssh_keys": [KEY]}, ("htop",), None),
])
def test_debian_kickstart_parses(variables: dict[str, Any], extra: tuple[str, ...],
                                 mirror: str | None) -> None:
    """A systemd image with udev (the serial console's device unit), sshd and a getty on
    ttyS0; the suite defaults to bookworm."""
    text = Renderer().render("kickstart/debian.ks.j2", variables, node="image")
    kickstart = parse(text, source="kickstart/debian.ks.j2")
    assert (kickstart.base.kind, kickstart.base.suite) == ("debootstrap", "bookworm")
    assert kickstart.base.mirror == mirror
    assert kickstart.kernel == "linux-image-cloud-amd64"
    assert {"systemd-sysv", "udev", "openssh-server", *extra} <= set(kickstart.packages)
    assert kickstart.services_enabled == ("ssh", "serial-getty@ttyS0")
    assert len(kickstart.sshkeys) == len(variables.get("ssh_keys", []))
    assert "ssh-keygen -q -t ed25519" in kickstart.posts[0].body


@pytest.mark.parametrize("flag", [True, "true"])
def test_debian_kickstart_with_slurm(flag: object) -> None:
    """`slurm = true` adds slurmd and munge, enabled, and makes the boot callback wait for a
    running slurmd; the image keeps no munge key (it comes in the node's overlay)."""
    text = Renderer().render("kickstart/debian.ks.j2", {"slurm": flag}, node="image")
    kickstart = parse(text, source="kickstart/debian.ks.j2")
    # dbus: slurmd's cgroup/v2 plugin needs systemd's bus to start at all
    assert {"slurmd", "munge", "dbus"} <= set(kickstart.packages)
    assert kickstart.services_enabled == ("ssh", "serial-getty@ttyS0", "munge", "slurmd")
    body = kickstart.posts[0].body
    assert "rm -f /etc/munge/munge.key" in body
    assert "ExecStartPre=+/bin/chown munge:munge /etc/munge /etc/munge/munge.key" in body
    assert "AssertPathExists=/etc/slurm/slurm.conf" in body  # no overlay's slurm.conf: no ready
    booted = body.split("provisioner-booted.service.d/slurmd.conf", 1)[1]
    assert "Requires=slurmd.service\nAfter=slurmd.service" in booted
    # Started is not initialized (Type=simple): the callback waits for slurmd's PID file.
    assert ("timeout 120 /bin/sh -c 'until [ -e /run/slurmd.pid ]; do systemctl -q "
            "is-active slurmd.service || exit 1" in booted)
    assert "mkdir -p /var/spool/slurmd" in body


@pytest.mark.parametrize("variables", [{}, {"slurm": False}, {"slurm": "false"}])
def test_debian_kickstart_without_slurm(variables: dict[str, Any]) -> None:
    text = Renderer().render("kickstart/debian.ks.j2", variables, node="image")
    kickstart = parse(text, source="kickstart/debian.ks.j2")
    assert not {"slurmd", "munge", "dbus"} & set(kickstart.packages)
    assert "munge" not in kickstart.posts[0].body
