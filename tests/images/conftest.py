"""Fixtures shared by the image tests (and by other suites that need a real kernel).

`cloud_kernel` fetches Debian's linux-image-cloud-amd64 once into /work/main/.cache/kernel (kept
between runs, gitignored) and returns its KernelTree; later sessions reuse the unpacked tree.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.images.build.kernel import DEFAULT_KERNEL_PACKAGE, KernelTree, fetch_kernel

KERNEL_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "kernel"


@pytest.fixture(scope="session")
def cloud_kernel() -> KernelTree:
    return fetch_kernel(DEFAULT_KERNEL_PACKAGE, KERNEL_CACHE)
