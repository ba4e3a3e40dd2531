"""Per-node overlays: templates/overlay/** rendered for one node, packed as cpio, xz-compressed.

The kernel unpacks the image and then this overlay over it, so the overlay's files win. The
answer is two archives back to back:

1. the rendered overlay as an xz-compressed newc cpio. It holds no secret, so it is cached by
   (template digest, node revision, hash of the node's variables) in a bounded LRU;
2. a small *uncompressed* newc cpio built per request: `etc/provisioner/token` (mode 0600) from
   the one-boot token and, when the handoff is Slurm with a munge key, the cluster's munge key
   (mode 0400) and slurm.conf (slurmfiles.py). Secrets stay out of the cached part.

Linux unpacks concatenated archives, compressed or not, as long as each starts 4-byte aligned;
an xz stream's length is always a multiple of 4 (its blocks, index and footer are padded), and
the code pads anyway so the cpio header that follows is aligned.
"""

from __future__ import annotations

import ipaddress
import statistics
import threading
import time
from collections import OrderedDict
from typing import Final

from provisioner.boot.slurmfiles import SlurmNodeFiles
from provisioner.images.format import compress, cpio
from provisioner.nodes.model import Firmware, MacAddress, Node
from provisioner.render.environment import BootContext, Network, RenderedFile, Renderer

TOKEN_PATH: Final = "etc/provisioner/token"
#: Directories that must not be world-readable (sshd's StrictModes, root's home).
PRIVATE_DIRS: Final = frozenset({"root", "root/.ssh"})
#: xz preset for overlays: a few KiB compress as well at 1 as at 6, with a far smaller dictionary
#: to set up (preset 6 allocates ~94 MiB per call).
OVERLAY_PRESET: Final = 1

_Key = tuple[str, int, str]


def overlay_entries(files: dict[str, RenderedFile]) -> list[cpio.Entry]:
    """cpio entries for rendered files, with every parent directory (0755; PRIVATE_DIRS 0700)."""
    entries = [cpio.file(path, f.text.encode(), f.mode) for path, f in files.items()]
    dirs = {"/".join(path.split("/")[:depth])
            for path in files for depth in range(1, path.count("/") + 1)}
    entries += [cpio.directory(d, 0o700 if d in PRIVATE_DIRS else 0o755) for d in dirs]
    return entries


def token_archive(token: str) -> bytes:
    """The uncompressed cpio appended after the cached part: the token file, mode 0600."""
    return cpio.pack(token_entries(token))


def token_entries(token: str) -> list[cpio.Entry]:
    return [cpio.directory("etc"), cpio.directory("etc/provisioner"),
            cpio.file(TOKEN_PATH, token.encode(), 0o600)]


def _aligned(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


class OverlayBuilder:
    """Builds overlay.cpio.xz answers; safe to share between threads and requests."""

    def __init__(self, renderer: Renderer, *, cache_size: int = 4096,
                 node_files: SlurmNodeFiles | None = None) -> None:
        self.renderer = renderer
        self.node_files = node_files  # appended per request, never cached
        self.cache_size = cache_size
        self._cache: OrderedDict[_Key, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def build(self, ctx: BootContext, *, node_revision: int) -> bytes:
        """The overlay for `ctx`'s node: the cached xz part, then the private archive (if any).
        Raises RenderError (naming template, line and node) if a template fails, ConfigError
        if the Slurm files cannot be read."""
        part = self.cached_part(ctx, node_revision=node_revision)
        private = self.private_entries(ctx.token)
        return part + cpio.pack(private) if private else part

    def private_entries(self, token: str | None) -> list[cpio.Entry]:
        """The token and the Slurm files, each directory once."""
        entries = token_entries(token) if token else []
        if self.node_files is not None:
            entries += self.node_files.entries()
        return list({entry.path: entry for entry in entries}.values())

    def cached_part(self, ctx: BootContext, *, node_revision: int) -> bytes:
        key = (self.renderer.digest("overlay/"), node_revision, ctx.variables_digest())
        with self._lock:
            part = self._cache.get(key)
            if part is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return part
        part = self.render_and_pack(ctx)
        with self._lock:
            self.misses += 1
            self._cache[key] = part
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return part

    def render_and_pack(self, ctx: BootContext) -> bytes:
        """Render overlay/**, pack and compress, without the cache (what the benchmark times)."""
        files = self.renderer.render_tree("overlay/", ctx.variables(), node=ctx.node.name)
        archive = cpio.pack(overlay_entries(files))
        return _aligned(compress.xz_bytes(archive, preset=OVERLAY_PRESET))

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


def sample_context() -> BootContext:
    """A representative node (static address, an SSH key, scheduler features) for benchmarks."""
    node = Node(mac=MacAddress("52:54:00:12:34:56"), name="node042",
                ip=ipaddress.IPv4Address("10.10.0.42"), firmware=Firmware.UEFI,
                groups=("compute",))
    network = Network(ip="10.10.0.42", prefix=24, gateway="10.10.0.1", dns=("10.10.0.1",),
                      domain="cluster")
    return BootContext.for_node(
        node, {"console": "ttyS0,115200", "scheduler_features": "ib,gpu"},
        boot_base="http://10.10.0.1", api_base="http://10.10.0.1:8080", image_name="compute",
        image_version="1", network=network, scheduler_url="http://10.10.0.1:8090",
        ssh_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchKey admin@head"], token="x" * 43)


def measure_render_and_pack(builder: OverlayBuilder | None = None, *,
                            rounds: int = 50) -> float:
    """Median seconds of one uncached overlay render+pack+xz (bench/images.py calls this)."""
    builder = builder or OverlayBuilder(Renderer())
    ctx = sample_context()
    builder.render_and_pack(ctx)  # warm the template cache, as a running server would be
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        builder.render_and_pack(ctx)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
