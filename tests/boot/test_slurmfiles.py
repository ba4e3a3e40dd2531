"""The Slurm files of a node's overlay: the munge key (0400) and slurm.conf ride in the
per-request archive beside the token, only when the handoff is Slurm with a munge key, and
never in the cached xz part or the render context. Unpacked with GNU cpio, as the kernel would."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from provisioner.boot.overlay import OverlayBuilder
from provisioner.boot.slurmfiles import SlurmNodeFiles, slurm_node_files
from provisioner.errors import ConfigError
from provisioner.images.format import cpio
from provisioner.render.environment import Renderer
from tests.images.test_overlay import gnu_cpio_extract, split
from tests.templates.cases import bios_context

KEY = bytes(range(256)) * 4  # munge keys are binary: 1024 bytes from mungekey -b 8192
CONF = b"ClusterName=lab\nSlurmctldHost=head(10.0.0.1)\n"


@pytest.fixture
def files(tmp_path: Path) -> SlurmNodeFiles:
    (tmp_path / "munge.key").write_bytes(KEY)
    (tmp_path / "slurm.conf").write_bytes(CONF)
    made = slurm_node_files("slurm", str(tmp_path / "munge.key"), str(tmp_path / "slurm.conf"))
    assert made is not None
    return made


def test_overlay_carries_the_key_0400_and_slurm_conf(files: SlurmNodeFiles,
                                                      tmp_path: Path) -> None:
    builder = OverlayBuilder(Renderer(), node_files=files)
    data = builder.build(bios_context(token="tok-s"), node_revision=1)
    xz_part, rest = split(data)
    root = tmp_path / "root"
    root.mkdir()
    gnu_cpio_extract(lzma.decompress(xz_part), root)
    gnu_cpio_extract(rest, root)
    key = root / "etc/munge/munge.key"
    assert key.read_bytes() == KEY
    assert key.stat().st_mode & 0o7777 == 0o400
    assert (root / "etc/slurm/slurm.conf").read_bytes() == CONF
    assert (root / "etc/provisioner/token").read_text() == "tok-s"
    # Each directory once in the private archive; the key never in the cached part.
    paths = [e.path for e in cpio.unpack(rest)]
    assert len(paths) == len(set(paths)) and paths.count("etc") == 1
    assert KEY[:64] not in lzma.decompress(xz_part)


def test_key_never_enters_the_render_context(files: SlurmNodeFiles) -> None:
    ctx = bios_context(token="tok")
    OverlayBuilder(Renderer(), node_files=files).build(ctx, node_revision=1)
    assert KEY.hex()[:32] not in repr(ctx.variables())
    assert "munge" not in repr(ctx.variables())


def test_no_slurm_files_unless_slurm_with_a_key(tmp_path: Path) -> None:
    assert slurm_node_files("builtin", str(tmp_path / "munge.key"), "") is None
    assert slurm_node_files("slurm", "", "") is None
    data = OverlayBuilder(Renderer()).build(bios_context(token="tok"), node_revision=1)
    _, rest = split(data)
    assert {e.path for e in cpio.unpack(rest)} == {"etc", "etc/provisioner",
                                                   "etc/provisioner/token"}


def test_unreadable_key_is_a_config_error_without_its_bytes(tmp_path: Path) -> None:
    files = slurm_node_files("slurm", str(tmp_path / "absent.key"), str(tmp_path / "c"))
    assert files is not None
    with pytest.raises(ConfigError, match=r"absent\.key: No such file"):
        files.check()
    with pytest.raises(ConfigError):
        OverlayBuilder(Renderer(), node_files=files).build(bios_context(token="t"),
                                                           node_revision=1)
