"""The lab's parts without booting anything: QEMU command lines, the generated settings, the
state file and the stop-by-PID helpers."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from provisioner.config import load_settings
from provisioner.errors import ConfigError
from provisioner.lab import procs
from provisioner.lab.lab import clean_console
from provisioner.lab.labconfig import LabOptions, render_config
from provisioner.lab.procs import Proc
from provisioner.lab.qemu import OVMF_CODE, QemuNode, firmware_for, lab_mac
from provisioner.lab.state import LabNode, LabState, load_state


def node(tmp_path: Path, firmware: str) -> QemuNode:
    return QemuNode("node001", lab_mac(1), firmware, "tap1", tmp_path / "n.qmp",
                    tmp_path / "n.console.log",
                    tmp_path / "n.vars" if firmware == "uefi" else None)


def test_bios_node_uses_seabios_and_the_ipxe_rom_with_the_console_on_serial(
        tmp_path: Path) -> None:
    argv = node(tmp_path, "bios").argv()
    assert argv[:1] == ["qemu-system-x86_64"]
    assert "pc,accel=tcg" in argv and "pflash" not in " ".join(argv)
    nic = argv[argv.index("-device", argv.index("-netdev")) + 1]
    assert nic == "virtio-net-pci,netdev=n0,mac=52:54:00:99:00:01"  # the default iPXE ROM
    assert argv[argv.index("sga") - 1: argv.index("sga") + 1] == ["-device", "sga"]
    assert f"file:{tmp_path / 'n.console.log'}" in argv
    assert f"unix:{tmp_path / 'n.qmp'},server=on,wait=off" in argv
    assert "-no-reboot" in argv and argv[argv.index("-boot") + 1] == "n"


def test_uefi_node_boots_ovmf_with_its_own_pxe_not_the_ipxe_rom(tmp_path: Path) -> None:
    q = node(tmp_path, "uefi")
    argv = q.argv()
    joined = " ".join(argv)
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}" in joined
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'n.vars'}" in joined
    assert "mac=52:54:00:99:00:01,romfile=" in joined and joined.count("romfile=") == 1
    assert "sga" not in argv
    q.prepare()
    assert (tmp_path / "n.vars").stat().st_size > 0  # a writable copy per node


def test_qemu_node_round_trips_and_checks_its_firmware(tmp_path: Path) -> None:
    q = node(tmp_path, "uefi")
    assert QemuNode.from_dict(q.to_dict()) == q
    with pytest.raises(ConfigError, match="firmware"):
        QemuNode("x", lab_mac(2), "coreboot", "tap2", tmp_path / "q", tmp_path / "c").prepare()
    with pytest.raises(ConfigError, match="accel"):
        QemuNode("x", lab_mac(2), "bios", "tap2", tmp_path / "q", tmp_path / "c",
                 accel="hax").prepare()
    kvm = QemuNode("x", lab_mac(2), "bios", "tap2", tmp_path / "q", tmp_path / "c", accel="kvm")
    assert "pc,accel=kvm" in kvm.argv()


def test_macs_and_mixed_firmware() -> None:
    assert [lab_mac(i) for i in (1, 255, 256)] == [
        "52:54:00:99:00:01", "52:54:00:99:00:ff", "52:54:00:99:01:00"]
    assert [firmware_for(i, "mixed") for i in (1, 2, 3)] == ["bios", "uefi", "bios"]
    assert firmware_for(2, "bios") == "bios"


def test_generated_settings_load_and_describe_the_lab(tmp_path: Path) -> None:
    options = LabOptions(tmp_path, address="10.99.0.1/24", images=tmp_path / "img")
    (tmp_path / "lab.toml").write_text(render_config(options))
    s = load_settings(tmp_path / "lab.toml", env={})
    assert (s.dhcp.mode, s.dhcp.interface, s.dhcp.discovery) == ("full", "br0", True)
    assert s.dhcp.subnets[0].network == "10.99.0.0/24"
    assert (s.dhcp.subnets[0].pool_start, s.dhcp.subnets[0].pool_end) == ("10.99.0.100",
                                                                          "10.99.0.199")
    assert (s.tftp.listen, s.tftp.port, s.boot.port) == ("10.99.0.1", 69, 80)
    assert (s.api.listen, s.api.auth) == ("10.99.0.1", True)
    assert s.scheduler.url == "http://10.99.0.1:8090"
    assert s.images_dir == tmp_path / "img" and s.data_dir == tmp_path / "appliance"
    assert dict(s.defaults) == {"console": "ttyS0,115200", "image": "compute",
                                "power_driver": "qemu"}
    assert s.store.backend == "sqlite"
    assert s.scheduler.token == ""  # Lab.create makes one: see test_lab.py


def test_the_handoff_is_the_builtin_scheduler_unless_the_lab_is_given_one(
        tmp_path: Path) -> None:
    (tmp_path / "lab.toml").write_text(render_config(LabOptions(tmp_path)))
    assert load_settings(tmp_path / "lab.toml", env={}).handoff.kind == "builtin"
    options = LabOptions(tmp_path, handoff='kind = "slurm"\nmunge_key = "/k"')
    (tmp_path / "lab.toml").write_text(render_config(options))
    handoff = load_settings(tmp_path / "lab.toml", env={}).handoff
    assert (handoff.kind, handoff.munge_key) == ("slurm", "/k")


def test_generated_settings_for_etcd_point_inside_the_namespace(tmp_path: Path) -> None:
    options = LabOptions(tmp_path, store="etcd")
    (tmp_path / "lab.toml").write_text(render_config(options))
    s = load_settings(tmp_path / "lab.toml", env={})
    assert s.store.backend == "etcd" and s.store.endpoints == ("10.99.0.1:2379",)


def test_two_heads_get_an_address_each_one_store_and_each_other_as_fallback(
        tmp_path: Path) -> None:
    options = LabOptions(tmp_path, store="etcd", heads=2)
    loaded = []
    for head in (1, 2):
        options.head_config(head).write_text(render_config(options, head))
        loaded.append(load_settings(options.head_config(head), env={}))
    one, two = loaded
    assert options.head_config(1) == options.config_path
    assert (one.api.listen, two.api.listen) == ("10.99.0.1", "10.99.0.2")
    assert (one.dhcp.server_ip, two.dhcp.server_ip) == ("10.99.0.1", "10.99.0.2")
    assert one.store.endpoints == two.store.endpoints == (
        "10.99.0.1:2379", "10.99.0.1:2479", "10.99.0.1:2579")
    assert one.ha.elect and two.ha.elect and not two.dhcp.detect_other_servers
    assert (one.ha.fallback_urls, two.ha.fallback_urls) == (("http://10.99.0.2",),
                                                            ("http://10.99.0.1",))
    assert one.images_dir == two.images_dir and one.data_dir != two.data_dir
    assert two.scheduler.url == one.scheduler.url == "http://10.99.0.1:8090"


def test_state_file_round_trips_and_is_private(tmp_path: Path) -> None:
    state = LabState(tmp_path, "ns", "br0", "10.99.0.1/24", tmp_path / "lab.toml", "sqlite",
                     api_url="http://10.99.0.1:8080", admin_token="id.secret",
                     procs=[Proc("appliance", 1, 2, "a.log")],
                     nodes=[LabNode(node(tmp_path, "bios"), Proc("node001", 3, 4, "q.log"))])
    state.save()
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600
    loaded = load_state(tmp_path)
    assert loaded is not None and loaded.to_dict() == state.to_dict()
    assert loaded.node("node001").qemu.mac == lab_mac(1)
    assert loaded.node(lab_mac(1)).proc == Proc("node001", 3, 4, "q.log")
    assert loaded.head("head1") == Proc("appliance", 1, 2, "a.log")
    with pytest.raises(ConfigError, match="no lab head 'head2'"):
        loaded.head("head2")
    with pytest.raises(ConfigError, match="no lab node"):
        loaded.node("node009")
    assert load_state(tmp_path / "elsewhere") is None
    state.path.write_text("{")
    with pytest.raises(ConfigError, match="unreadable"):
        load_state(tmp_path)


def test_processes_are_stopped_by_pid_and_a_recycled_pid_is_left_alone(tmp_path: Path) -> None:
    proc = procs.spawn("sleeper", ["sleep", "60"], tmp_path / "sleep.log")
    assert procs.alive(proc)
    impostor = Proc("sleeper", proc.pid, proc.start_time + 1, proc.log)
    assert not procs.alive(impostor)
    procs.stop(impostor)  # another process under the same PID: never signalled
    assert procs.alive(proc)
    began = time.monotonic()
    procs.stop(proc)
    assert not procs.alive(proc) and time.monotonic() - began < 5
    procs.stop(proc)  # twice is fine
    gone = subprocess.run(["kill", "-0", str(proc.pid)], capture_output=True, check=False)
    assert gone.returncode != 0


def test_sigkill_ends_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    proc = procs.spawn("stubborn", ["sh", "-c", "trap '' TERM; sleep 60"], tmp_path / "s.log")
    time.sleep(0.2)
    procs.stop(proc, grace=0.5)
    assert not procs.alive(proc)
    assert os.path.exists(tmp_path / "s.log")


def test_console_escapes_are_removed() -> None:
    raw = "\x1b[1;256r\x1b[0m\x1b[37m\x1b[40miPXE\x1b[0m ok\r\n76%\x08\x08\x08 ok"
    assert clean_console(raw) == "iPXE ok\n76% ok"
