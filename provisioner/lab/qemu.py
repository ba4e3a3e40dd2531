"""One QEMU compute node: TCG, PXE only, serial console to a file, QMP on a unix socket.

Firmware:
- bios: SeaBIOS (`-M pc`) with the iPXE option ROM of Debian's ipxe-qemu on a virtio NIC. That
  ROM *is* iPXE: its DHCP request carries user class "iPXE", so the appliance hands it the HTTP
  boot script directly (no TFTP stage).
- uefi: OVMF from pflash (read-only CODE, a per-node writable copy of VARS) with the NIC's option
  ROM disabled (`romfile=`), so OVMF's own virtio-net driver and PXE client boot: DHCP with
  architecture 7, then the iPXE EFI binary over TFTP, chainloaded by firmware that is not iPXE.

`-no-reboot`: a guest that reboots (the kernel's `panic=-1`) ends QEMU instead of looping, so a
failed boot is seen at once. The QMP socket is what the `qemu` power driver talks to.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.errors import ConfigError

QEMU = "qemu-system-x86_64"
IPXE_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")  # BIOS + EFI iPXE for virtio-net
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
FIRMWARES = ("bios", "uefi")


@dataclass(frozen=True)
class QemuNode:
    name: str
    mac: str
    firmware: str  # bios | uefi
    tap: str
    qmp: Path  # unix socket for QMP
    console: Path  # serial console log
    vars_file: Path | None = None  # per-node OVMF_VARS copy (uefi)
    memory_mib: int = 1024
    cpus: int = 1
    no_reboot: bool = True
    #: tcg (default: KVM fails on these machines, see ENVIRONMENT.md) or kvm where it works
    accel: str = "tcg"

    def prepare(self) -> None:
        """Check the binaries, create the directories and the writable OVMF variable store."""
        if shutil.which(QEMU) is None:
            raise ConfigError(f"{QEMU} not found: install qemu-system-x86 (scripts/setup.sh)")
        if self.firmware not in FIRMWARES:
            raise ConfigError(f"firmware {self.firmware!r} is not one of {', '.join(FIRMWARES)}")
        if self.accel not in ("tcg", "kvm"):
            raise ConfigError(f"accel {self.accel!r} is not tcg or kvm")
        needed = [IPXE_ROM] if self.firmware == "bios" else [OVMF_CODE, OVMF_VARS]
        for path in needed:
            if not path.exists():
                raise ConfigError(f"{path} is missing: install ipxe-qemu and ovmf "
                                  "(scripts/setup.sh)")
        for path in (self.qmp, self.console):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.qmp.unlink(missing_ok=True)
        if self.firmware == "uefi":
            if self.vars_file is None:
                raise ConfigError(f"{self.name}: a UEFI node needs a vars_file")
            shutil.copyfile(OVMF_VARS, self.vars_file)

    def argv(self) -> list[str]:
        nic = f"virtio-net-pci,netdev=n0,mac={self.mac}"
        if self.firmware == "bios":
            machine = ["-machine", f"pc,accel={self.accel}"]
            # The default ROM of virtio-net-pci is Debian's ipxe-qemu efi-virtio.rom; naming
            # it in romfile= (absolute path) left SeaBIOS without a network boot entry.
            # SeaBIOS and the iPXE ROM print through the BIOS video services; the serial
            # graphics adapter copies that to the serial console, so the log shows them too.
            firmware: list[str] = ["-device", "sga"]
        else:
            machine = ["-machine", f"q35,accel={self.accel}"]
            nic += ",romfile="
            firmware = [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={self.vars_file}",
            ]
        return [
            QEMU, "-name", self.name, *machine, *firmware,
            "-m", str(self.memory_mib), "-smp", str(self.cpus),
            "-display", "none", "-vga", "none", "-monitor", "none",
            "-serial", f"file:{self.console}",
            "-qmp", f"unix:{self.qmp},server=on,wait=off",
            "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
            "-device", nic, "-boot", "n",
            *(["-no-reboot"] if self.no_reboot else []),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mac": self.mac, "firmware": self.firmware, "tap": self.tap,
                "qmp": str(self.qmp), "console": str(self.console),
                "vars_file": str(self.vars_file) if self.vars_file else None,
                "memory_mib": self.memory_mib, "cpus": self.cpus, "no_reboot": self.no_reboot,
                "accel": self.accel}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QemuNode:
        return cls(data["name"], data["mac"], data["firmware"], data["tap"], Path(data["qmp"]),
                   Path(data["console"]),
                   Path(data["vars_file"]) if data.get("vars_file") else None,
                   int(data["memory_mib"]), int(data["cpus"]), bool(data["no_reboot"]),
                   str(data.get("accel", "tcg")))


def lab_mac(index: int) -> str:
    """Fixed, locally administered MACs in QEMU's 52:54:00 range: 52:54:00:99:00:01, ..."""
    return f"52:54:00:99:{index >> 8 & 0xff:02x}:{index & 0xff:02x}"


def firmware_for(index: int, choice: str) -> str:
    """`mixed` alternates bios, uefi, bios, ... starting at node 1."""
    if choice == "mixed":
        return "bios" if index % 2 == 1 else "uefi"
    return choice
