"""Which first-stage file a booting client gets: firmware from options 60, 77, 93 and 175, then
the file for that firmware (PXE spec 2.1, UEFI 2.5 section 24.7 for HTTP boot, iPXE's own
options). Pure: no store, no sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final

from provisioner.dhcp.options import (
    ARCH_EFI_ARM64,
    ARCH_EFI_BC,
    ARCH_EFI_X86_64,
    ARCH_HTTP_ARM64,
    ARCH_HTTP_X86_64,
    ARCH_X86_BIOS,
    Opt,
    decode_user_classes,
)
from provisioner.dhcp.packet import DhcpPacket
from provisioner.nodes.model import Firmware, MacAddress


def is_pxe(packet: DhcpPacket) -> bool:
    """PXE spec 2.1 section 2.2: a PXE client sends option 60 "PXEClient..."; UEFI HTTP boot
    (UEFI 2.5 section 24.7) sends "HTTPClient...". iPXE sends "PXEClient" too."""
    vendor = packet.vendor_class
    return vendor is not None and vendor.startswith((b"PXEClient", b"HTTPClient"))


def is_ipxe(packet: DhcpPacket) -> bool:
    """iPXE sends user class "iPXE" (option 77) and its own options encapsulated in 175."""
    if Opt.IPXE_ENCAP in packet.options:
        return True
    user_class = packet.user_class
    return user_class is not None and b"iPXE" in decode_user_classes(user_class)


_ARCH_FIRMWARE: Final[Mapping[int, Firmware]] = {
    ARCH_X86_BIOS: Firmware.BIOS,
    ARCH_EFI_BC: Firmware.UEFI,
    ARCH_EFI_X86_64: Firmware.UEFI,
    ARCH_EFI_ARM64: Firmware.UEFI_ARM64,
    ARCH_HTTP_X86_64: Firmware.UEFI_HTTP,
    ARCH_HTTP_ARM64: Firmware.UEFI_HTTP,
}


def client_arch(packet: DhcpPacket) -> int | None:
    """Option 93's first entry, else the "Arch:NNNNN" field of option 60 (PXE spec 2.1 table
    2-1: "PXEClient:Arch:xxxxx:UNDI:yyyzzz"; UEFI HTTP: "HTTPClient:Arch:xxxxx...")."""
    arch = packet.client_arch
    if arch is not None:
        return arch
    fields = (packet.vendor_class or b"").split(b":")
    if len(fields) >= 3 and fields[1] == b"Arch" and fields[2].isdigit():
        return int(fields[2])
    return None


def classify_firmware(packet: DhcpPacket) -> Firmware:
    """iPXE first (it also sends 93 and 60), then the architecture. IA32 EFI (6) and other
    architectures we have no binary for are UNKNOWN: they get an address but no boot file."""
    if is_ipxe(packet):
        return Firmware.IPXE
    arch = client_arch(packet)
    return Firmware.UNKNOWN if arch is None else _ARCH_FIRMWARE.get(arch, Firmware.UNKNOWN)


@dataclass(frozen=True, slots=True)
class FirstStageFiles:
    """The first-stage boot file for each firmware (names as in Debian's ipxe package,
    /usr/lib/ipxe) and the HTTP boot plane they point to. `http_host` defaults to the server
    address of the segment. Built from [dhcp] and [boot]; not config.BootSettings itself, which
    is the whole [boot] section."""

    bios_file: str = "undionly.kpxe"
    uefi_x64_file: str = "ipxe.efi"  # or "snponly.efi": uses the firmware's own NIC driver
    uefi_arm64_file: str = "ipxe-arm64.efi"
    http_host: str | None = None
    http_port: int = 80

    def http_base(self, server: IPv4Address) -> str:
        host = self.http_host or str(server)
        return f"http://{host}" if self.http_port == 80 else f"http://{host}:{self.http_port}"


@dataclass(frozen=True, slots=True)
class BootInfo:
    """What a reply tells the firmware to load: `filename` is a TFTP path or an http:// URL."""

    filename: str
    next_server: IPv4Address  # siaddr: the TFTP server (RFC 2131 section 2)
    vendor_class: bytes | None = None  # echoed in option 60 when the firmware needs it


def boot_file(
    firmware: Firmware,
    files: FirstStageFiles,
    *,
    server: IPv4Address,
    mac: MacAddress,
    arch: int | None = None,
    override: str | None = None,
) -> BootInfo | None:
    """The boot file for a client. `override` (the node's or group's `bootfile` setting) wins,
    except for iPXE: a client already running iPXE always gets its boot script, so a
    chainload can never loop. UNKNOWN firmware gets nothing (address only)."""
    if firmware is Firmware.IPXE:
        return BootInfo(f"{files.http_base(server)}/boot/{mac}.ipxe", server)
    if firmware is Firmware.UEFI_HTTP:
        # UEFI 2.5 section 24.7.2: the offer must echo option 60 "HTTPClient" and carry a URI.
        name = files.uefi_arm64_file if arch == ARCH_HTTP_ARM64 else files.uefi_x64_file
        url = override or f"{files.http_base(server)}/boot/{name}"
        return BootInfo(url, server, b"HTTPClient")
    if override:
        return BootInfo(override, server)
    tftp_name = {
        Firmware.BIOS: files.bios_file,
        Firmware.UEFI: files.uefi_x64_file,
        Firmware.UEFI_ARM64: files.uefi_arm64_file,
    }.get(firmware)
    return None if tftp_name is None else BootInfo(tftp_name, server)
