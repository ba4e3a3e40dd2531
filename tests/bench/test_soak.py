"""bench/soak.py for a few seconds: nodes boot through the real appliance, the figures are
printed every interval and judged at the end, and the namespace and the appliance are gone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = re.compile(r"boots +(\d+) +failed +(\d+) +rss +[\d.]+ MiB +fds +(\d+) +store +[\d.]+ "
                     r"MiB +keys +(\d+) +events +(\d+) +restarts +(\d+)")


def namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                    reason="the soak's namespace needs root and iproute2")
def test_a_short_soak_prints_its_figures_and_cleans_up() -> None:
    before = namespaces()
    run = subprocess.run([sys.executable, "bench/soak.py", "--seconds", "12", "--interval", "4",
                          "--nodes", "2"], cwd=ROOT, capture_output=True, text=True, timeout=240,
                         check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = FIGURES.findall(run.stdout)
    assert len(lines) >= 2, run.stdout
    boots, _failed, fds, keys, events, restarts = (int(v) for v in lines[-1])
    assert boots > 0 and fds > 0 and keys > 0 and events > 0, run.stdout
    assert restarts == 0, run.stdout
    assert re.search(r"RSS .* FDs .*(PASS|FAIL)", run.stdout), run.stdout
    pid = int(re.search(r"appliance PID (\d+)", run.stdout).group(1))  # type: ignore[union-attr]
    assert not Path(f"/proc/{pid}").exists()
    assert {n for n in namespaces() - before if n.startswith("pv-soak-")} == set()
