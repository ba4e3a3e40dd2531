"""The Slurm files of a node's overlay: the cluster's munge key and slurm.conf, read from the
head when the handoff is Slurm and `[handoff] munge_key` is set.

They go in the per-request, uncompressed part of the overlay, beside the one-boot token, and
never in the cached xz part (which holds no secret) nor in the render context (templates never
see a secret). The overlay is served only to the node's own leased address (binding.py), so
the key reaches that node alone. The archive's owner is root: the image chowns the key to its
munge user by name before munged starts (kickstart/debian.ks.j2, `slurm = true`), since the
munge uid inside the image is the image's business. munged refuses a key readable by others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from provisioner.errors import ConfigError
from provisioner.images.format import cpio

MUNGE_KEY_PATH: Final = "etc/munge/munge.key"
SLURM_CONF_PATH: Final = "etc/slurm/slurm.conf"
#: slurm.conf when [handoff] slurm_conf is empty: where scontrol itself looks.
DEFAULT_SLURM_CONF: Final = "/etc/slurm/slurm.conf"


class SlurmNodeFiles:
    """Reads the head's munge key and slurm.conf at each overlay build, so a key or a slurm.conf
    changed on the head reaches the next node that boots without a restart."""

    def __init__(self, munge_key: Path, slurm_conf: Path) -> None:
        self.munge_key = munge_key
        self.slurm_conf = slurm_conf

    def entries(self) -> list[cpio.Entry]:
        """The files, mode 0400 for the key, with their parent directories."""
        key, conf = self._read(self.munge_key), self._read(self.slurm_conf)
        return [cpio.directory("etc"), cpio.directory("etc/munge"),
                cpio.file(MUNGE_KEY_PATH, key, 0o400), cpio.directory("etc/slurm"),
                cpio.file(SLURM_CONF_PATH, conf, 0o644)]

    def check(self) -> None:
        """Fail at start, with what to fix, rather than at the first node's boot."""
        self.entries()

    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            # The path and the reason only: the key's bytes never reach a message or a log.
            raise ConfigError(f"[handoff] cannot read {path}: {exc.strerror}; set munge_key "
                              "and slurm_conf to files this head can read") from None


def slurm_node_files(kind: str, munge_key: str, slurm_conf: str) -> SlurmNodeFiles | None:
    """The files to ship when the handoff is Slurm and a munge key is configured, else None."""
    if kind != "slurm" or not munge_key:
        return None
    return SlurmNodeFiles(Path(munge_key), Path(slurm_conf or DEFAULT_SLURM_CONF))
