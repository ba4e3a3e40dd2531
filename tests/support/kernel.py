"""The Debian cloud kernel the image, iPXE and lab tests boot, fetched once per session into
the checkout's cache (apt-get download + dpkg -x; see images/build/kernel.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.images.build.kernel import DEFAULT_KERNEL_PACKAGE, KernelTree, fetch_kernel

KERNEL_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "kernel"


@pytest.fixture(scope="session")
def kernel() -> KernelTree:
    return fetch_kernel(DEFAULT_KERNEL_PACKAGE, KERNEL_CACHE)
