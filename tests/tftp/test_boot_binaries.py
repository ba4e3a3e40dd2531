"""The iPXE binaries copied into the TFTP root, and `<mac>.ipxe` rendered per client."""

from __future__ import annotations

import os
from pathlib import Path

from provisioner.tftp.sources import SourceResolver, install_boot_binaries, ipxe_chain_provider


def test_binaries_are_copied_once_and_symlinks_resolved(tmp_path: Path) -> None:
    source, root = tmp_path / "ipxe", tmp_path / "root"
    source.mkdir()
    (tmp_path / "real.efi").write_bytes(b"EFI" * 100)
    (source / "ipxe.efi").symlink_to(tmp_path / "real.efi")  # as Debian ships it
    (source / "undionly.kpxe").write_bytes(b"PXE" * 50)
    assert sorted(install_boot_binaries(source, root)) == ["ipxe.efi", "undionly.kpxe"]
    assert not (root / "ipxe.efi").is_symlink()
    assert (root / "ipxe.efi").read_bytes() == b"EFI" * 100
    assert install_boot_binaries(source, root) == []  # unchanged: nothing copied
    (source / "undionly.kpxe").write_bytes(b"NEW" * 60)
    os.utime(source / "undionly.kpxe", (1, 1))
    assert install_boot_binaries(source, root) == ["undionly.kpxe"]
    assert install_boot_binaries(tmp_path / "absent", root) == []


def test_mac_scripts_chain_to_the_http_boot_plane(tmp_path: Path) -> None:
    resolver = SourceResolver(tmp_path, [ipxe_chain_provider("http://10.0.0.1:8069")])
    for name in ("52:54:00:ab:cd:ef.ipxe", "52-54-00-AB-CD-EF.ipxe", "525400abcdef.ipxe"):
        source = resolver.open((name,), "10.0.0.50")
        script = source.read(0, 4096).decode()
        assert script.startswith("#!ipxe\n")
        assert "chain --autofree http://10.0.0.1:8069/boot/52:54:00:ab:cd:ef.ipxe" in script
        assert source.size == len(script)
    (tmp_path / "notes.ipxe").write_text("#!ipxe\necho static\n")
    assert resolver.open(("notes.ipxe",), "10.0.0.50").read(0, 100) == b"#!ipxe\necho static\n"
