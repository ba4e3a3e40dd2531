"""Image benchmark: the real builder, our xz against `xz -T0`, and per-node overlays.

    .venv/bin/python bench/images.py [--runs 3] [--overlays 200] [--json FILE]
    .venv/bin/python bench/images.py --runs 1 --overlays 50          # quick

Needs root (the %post of the shipped compute kickstart runs in a chroot), busybox-static,
xz-utils, and the Debian cloud kernel (fetched once into .cache/kernel, like the tests).

What it measures, medians (min-max) over --runs:
- build: `kickstart/compute.ks.j2` (busybox base, cloud kernel, virtio modules, a %post) into a
  fresh catalog, forced, with the kernel already fetched: render to published version.
- rebuild: the same request again without --force: the cache hit (inputs_sha256 unchanged).
- compress: one cpio of the unpacked kernel package (boot/ and lib/modules/, about 100 MiB),
  compressed by provisioner.images.format.compress.xz_compress (threads=0) and by the peer
  `xz -T0 --check=crc32 -6` (bench/peers/xz.py) in the same run, interleaved; MB/s of cpio
  input (10^6 bytes/s) and our/xz ratio (target >= 0.9).
- overlay: OverlayBuilder.render_and_pack (render overlay/**, cpio, xz, no cache) for
  --overlays distinct nodes, and build() with the cache warm (what a repeat boot costs).
Targets (issue 5): build < 30 s, rebuild < 2 s, compress >= 0.9x, overlay < 50 ms.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ itself is sys.path[0] (bench/http.py would shadow http).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.peers import xz  # noqa: E402
from bench.peers.testbed import unwinding  # noqa: E402
from provisioner.boot.overlay import OverlayBuilder  # noqa: E402
from provisioner.images.build.builder import BuildRequest, ImageBuilder  # noqa: E402
from provisioner.images.build.kernel import DEFAULT_KERNEL_PACKAGE, KernelTree, fetch_kernel  # noqa: E402
from provisioner.images.format import archive, compress  # noqa: E402
from provisioner.images.format.catalog import ImageCatalog  # noqa: E402
from provisioner.nodes.model import MacAddress, Node  # noqa: E402
from provisioner.render.environment import BootContext, Renderer  # noqa: E402

KERNEL_CACHE = ROOT / ".cache" / "kernel"


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def show(label: str, values: list[float], unit: str, target: str) -> None:
    s = summary(values)
    print(f"{label:<34} {s['median']:9.3f} {unit:<5} ({s['min']:.3f}-{s['max']:.3f})  {target}")


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def bench_build(kernel: KernelTree, work: Path, runs: int) -> tuple[list[float], list[float]]:
    catalog = ImageCatalog(work / "images", keep=2)
    builder = ImageBuilder(catalog, Renderer(), work / "cache")
    request = BuildRequest("kickstart/compute.ks.j2", "compute", kernel=str(kernel.root))
    forced = BuildRequest(request.template, request.name, kernel=request.kernel, force=True)
    builds, rebuilds = [], []
    builder.build(request)  # warm-up: page cache, the kernel memo
    for _ in range(runs):
        builds.append(timed(lambda: builder.build(forced)))
        rebuilds.append(timed(lambda: builder.build(request)))
    return builds, rebuilds


def bench_compress(kernel: KernelTree, work: Path, runs: int) -> dict[str, Any]:
    cpio_path = work / "kernel.cpio"
    size = archive.write_tree_file(kernel.root, cpio_path)
    ours, theirs = [], []
    for _ in range(runs):
        ours.append(size / 1e6 / timed(lambda: compress.xz_compress(
            cpio_path, work / "ours.xz", threads=0)))
        with (work / "xz.xz").open("wb") as out:
            theirs.append(size / 1e6 / timed(lambda: subprocess.run(
                xz.argv(cpio_path), stdout=out, check=True, timeout=600)))
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {"cpio_bytes": size, "ours_mb_s": ours, "xz_mb_s": theirs, "ratio": ratios,
            "ours_bytes": (work / "ours.xz").stat().st_size,
            "xz_bytes": (work / "xz.xz").stat().st_size}


def bench_overlay(count: int) -> tuple[list[float], list[float]]:
    builder = OverlayBuilder(Renderer())
    contexts = [BootContext.for_node(
        Node(MacAddress(f"52:54:00:00:{i >> 8:02x}:{i & 0xFF:02x}"), f"node{i:04d}"), {},
        boot_base="http://10.0.0.1", api_base="http://10.0.0.1:8080", image_name="compute",
        image_version="1", token=f"token-{i}") for i in range(count)]
    cold = [timed(functools.partial(builder.render_and_pack, ctx)) * 1000 for ctx in contexts]
    for ctx in contexts:
        builder.build(ctx, node_revision=1)
    warm = [timed(functools.partial(builder.build, ctx, node_revision=1)) * 1000
            for ctx in contexts]
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--overlays", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kernel = fetch_kernel(DEFAULT_KERNEL_PACKAGE, KERNEL_CACHE)
    print(f"cpus: {os.cpu_count()}  kernel: {kernel.release}  runs: {args.runs}")
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        work = Path(tmp)
        builds, rebuilds = bench_build(kernel, work, args.runs)
        show("busybox image build", builds, "s", "target < 30 s")
        show("no-change rebuild (cache hit)", rebuilds, "s", "target < 2 s")
        comp = bench_compress(kernel, work, args.runs)
        print(f"compress input: cpio of the kernel package, {comp['cpio_bytes'] / 1e6:.1f} MB; "
              f"output ours {comp['ours_bytes']} bytes, xz {comp['xz_bytes']} bytes")
        show("xz_compress (lzma-mt, threads=0)", comp["ours_mb_s"], "MB/s", "")
        show("xz -T0 --check=crc32 -6", comp["xz_mb_s"], "MB/s", "")
        show("ours / xz", comp["ratio"], "x", "target >= 0.9x")
        cold, warm = bench_overlay(args.overlays)
        show("overlay render+pack (no cache)", cold, "ms", "target < 50 ms")
        show("overlay build (cache warm)", warm, "ms", "")
    if args.json:
        args.json.write_text(json.dumps({
            "build_s": summary(builds), "rebuild_s": summary(rebuilds),
            "compress": {k: summary(v) if isinstance(v, list) else v for k, v in comp.items()},
            "overlay_ms": summary(cold), "overlay_cached_ms": summary(warm)}, indent=2))


if __name__ == "__main__":
    with unwinding():
        main()
