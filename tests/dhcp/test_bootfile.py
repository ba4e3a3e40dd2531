"""Which first-stage file boots: firmware from options 60, 77, 93 and 175, then the file."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from provisioner.dhcp.bootfile import (
    BootInfo,
    FirstStageFiles,
    boot_file,
    classify_firmware,
    is_pxe,
)
from provisioner.dhcp.packet import DhcpPacket, decode
from provisioner.nodes.model import Firmware
from tests.dhcp.test_policy import NODE_MAC, SERVER
from tests.dhcp.test_vectors import (
    CLIENTS,
    IPXE_BIOS,
    UDHCPC,
    UEFI_HTTP_X64,
    Option,
    client_wire,
    wire,
)


def with_options(*options: Option) -> DhcpPacket:
    return decode(wire([(53, b"\x01"), *options]))


FIRMWARE_TABLE: list[tuple[Sequence[Option], Firmware]] = [
    ([(93, b"\x00\x00")], Firmware.BIOS),
    ([(93, b"\x00\x06")], Firmware.UNKNOWN),  # IA32 EFI: no binary configured for it
    ([(93, b"\x00\x07")], Firmware.UEFI),
    ([(93, b"\x00\x09")], Firmware.UEFI),
    ([(93, b"\x00\x0b")], Firmware.UEFI_ARM64),
    ([(93, b"\x00\x10")], Firmware.UEFI_HTTP),
    ([(93, b"\x00\x13")], Firmware.UEFI_HTTP),
    ([(93, b"\x00\x02")], Firmware.UNKNOWN),  # Itanium
    ([(93, b"\x00")], Firmware.UNKNOWN),  # malformed 93, no 60
    ([(60, b"PXEClient:Arch:00000:UNDI:002001")], Firmware.BIOS),
    ([(60, b"PXEClient:Arch:00009:UNDI:003016")], Firmware.UEFI),
    ([(60, b"HTTPClient:Arch:00016:UNDI:003000")], Firmware.UEFI_HTTP),
    ([(60, b"PXEClient")], Firmware.UNKNOWN),
    ([(60, b"PXEClient:Arch:xyz")], Firmware.UNKNOWN),
    ([(93, b"\x00\x07"), (60, b"PXEClient:Arch:00000")], Firmware.UEFI),  # 93 wins
    ([(93, b"\x00\x00"), (77, b"iPXE")], Firmware.IPXE),
    ([(93, b"\x00\x07"), (77, b"\x04iPXE")], Firmware.IPXE),  # RFC 3004 form
    ([(93, b"\x00\x09"), (175, b"\xb1\x05\x01\x80\x86\x10\x0e")], Firmware.IPXE),
    ([(77, b"iPXEish")], Firmware.UNKNOWN),
    ([], Firmware.UNKNOWN),
]


@pytest.mark.parametrize(("options", "firmware"), FIRMWARE_TABLE)
def test_classify_firmware(options: Sequence[Option], firmware: Firmware) -> None:
    assert classify_firmware(with_options(*options)) == firmware


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_real_clients_firmware(name: str) -> None:
    assert classify_firmware(decode(client_wire(name))) == CLIENTS[name][2]


def test_is_pxe() -> None:
    assert is_pxe(decode(wire(IPXE_BIOS)))
    assert is_pxe(decode(wire(UEFI_HTTP_X64)))
    assert not is_pxe(decode(wire(UDHCPC)))


SETTINGS = FirstStageFiles()
BOOT_TABLE: list[tuple[Firmware, int | None, str | None, str | None, bytes | None]] = [
    (Firmware.BIOS, 0, None, "undionly.kpxe", None),
    (Firmware.UEFI, 7, None, "ipxe.efi", None),
    (Firmware.UEFI_ARM64, 11, None, "ipxe-arm64.efi", None),
    (Firmware.UEFI_HTTP, 16, None, "http://10.0.0.1/boot/ipxe.efi", b"HTTPClient"),
    (Firmware.UEFI_HTTP, 19, None, "http://10.0.0.1/boot/ipxe-arm64.efi", b"HTTPClient"),
    (Firmware.IPXE, 0, None, "http://10.0.0.1/boot/52:54:00:c0:ff:ee.ipxe", None),
    (Firmware.UNKNOWN, None, None, None, None),
    (Firmware.BIOS, 0, "pxelinux.0", "pxelinux.0", None),  # per-node/group override wins
    (Firmware.UEFI, 9, "snponly.efi", "snponly.efi", None),
    (Firmware.UNKNOWN, None, "custom.efi", "custom.efi", None),
    (Firmware.UEFI_HTTP, 16, "http://x/y.efi", "http://x/y.efi", b"HTTPClient"),
    # Never loop: an iPXE client gets its script even when the first stage is overridden.
    (Firmware.IPXE, 0, "undionly.kpxe", "http://10.0.0.1/boot/52:54:00:c0:ff:ee.ipxe", None),
]


@pytest.mark.parametrize(("firmware", "arch", "override", "name", "vendor"), BOOT_TABLE)
def test_boot_file(
    firmware: Firmware,
    arch: int | None,
    override: str | None,
    name: str | None,
    vendor: bytes | None,
) -> None:
    boot = boot_file(
        firmware, SETTINGS, server=SERVER, mac=NODE_MAC, arch=arch, override=override
    )
    if name is None:
        assert boot is None
    else:
        assert boot == BootInfo(name, SERVER, vendor)


def test_boot_settings_are_configurable() -> None:
    settings = FirstStageFiles(uefi_x64_file="snponly.efi", http_host="head", http_port=8080)
    boot = boot_file(Firmware.UEFI, settings, server=SERVER, mac=NODE_MAC)
    assert boot is not None
    assert boot.filename == "snponly.efi"
    script = boot_file(Firmware.IPXE, settings, server=SERVER, mac=NODE_MAC)
    assert script is not None
    assert script.filename == "http://head:8080/boot/52:54:00:c0:ff:ee.ipxe"
