"""What the planes call when something happens: a file sent, a request refused. Each is a
line at the place it happens; the metrics are in registry.py (store operations are timed by
provisioner/store/timed.py).

File names and paths are reduced here to a kind from a fixed set, and reasons must be fixed
texts (the callers pass words, never an address or a MAC), so label values stay few.
"""

from __future__ import annotations

from typing import Final

from provisioner.metrics import registry

#: the boot plane's paths by their ending (boot/routes.py, images/format/catalog.py)
HTTP_KINDS: Final = ((".ipxe", "script"), ("/overlay.cpio.xz", "overlay"),
                     ("/install.ks", "kickstart"), ("/vmlinuz", "kernel"),
                     ("/image.cpio.xz", "image"))
#: what PXE ROMs fetch over TFTP: the iPXE binaries (first stage), else a script or other file
TFTP_KINDS: Final = ((".efi", "ipxe"), (".kpxe", "ipxe"), (".pxe", "ipxe"), (".0", "ipxe"),
                     (".ipxe", "script"))


def kind_of(name: str, kinds: tuple[tuple[str, str], ...]) -> str:
    lowered = name.lower()
    return next((kind for end, kind in kinds if lowered.endswith(end)), "other")


def http_served(path: str, status: int, sent: int) -> None:
    """The boot plane answered `path` with `status` and `sent` bytes of body."""
    kind = kind_of(path.partition("?")[0], HTTP_KINDS)
    registry.HTTP_TRANSFERS.labels(kind, f"{status // 100}xx").inc()
    if sent:
        registry.HTTP_BYTES.labels(kind).inc(sent)


def tftp_transfer(filename: str, sent: int, ok: bool) -> None:
    kind = kind_of(filename, TFTP_KINDS)
    registry.TFTP_TRANSFERS.labels(kind, "ok" if ok else "failed").inc()
    if sent:
        registry.TFTP_BYTES.labels(kind).inc(sent)


def refused(plane: str, reason: str) -> None:
    """A refused request; `reason` is one of the caller's fixed words (never client text)."""
    registry.REFUSED.labels(plane, reason).inc()

