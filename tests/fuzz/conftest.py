"""The appliance every malformed-input run abuses (tests/fuzz/bed.py): one for the package, so
that each plane's run also meets whatever the previous planes' runs left behind."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.bed import FuzzBed, running_bed


@pytest.fixture(scope="package")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzBed]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the fuzz bed's namespace needs root and iproute2")
    work: Path = tmp_path_factory.mktemp("fuzz")
    with running_bed(work) as started:
        yield started
