"""Lab fixtures for the e2e and security suites: one image built per session, and labs
(namespace, appliance, scheduler, QEMU nodes) torn down by PID after each test. A failing test
prints every node's console tail, its event timeline and the appliance log tail.

These tests need root (network namespaces) and QEMU; they are never skipped on a machine that
has them, and each QEMU boot is bounded by the stage limits in provisioner/lab/observe.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from provisioner.lab.lab import Lab, lab_env, read_console, tail
from provisioner.lab.labconfig import LabOptions
from provisioner.lab.observe import wait_ready
from provisioner.lab.state import LabNode
from provisioner.lab.storeview import snapshot

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "lab"  # the Debian cloud kernel, downloaded once
KICKSTART = "kickstart/compute.ks.j2"

JOB_TIMEOUT = 120.0

MakeLab = Callable[..., Lab]


def require_lab() -> None:
    if os.geteuid() != 0:
        pytest.skip("the QEMU lab needs root (network namespaces and taps)")
    for tool in ("ip", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/setup.sh")


def build_image(images: Path, name: str = "compute", *, force: bool = False,
                kickstart: str = KICKSTART, cache: Path = CACHE,
                variables: Sequence[str] = ()) -> str:
    """`provisioner image build --activate` into `images` (`force`: a new version even with
    the same inputs; `variables`: the kickstart's NAME=VALUE); returns the current version,
    the one just built (or the current one when its inputs are the same: the builder's own
    cache)."""
    config = images.parent / f"{images.name}-build.toml"
    config.write_text(f'data_dir = "{images.parent / "build-data"}"\n[boot]\n'
                      f'images = "{images}"\n[images]\ncache = "{cache}"\n')
    result = subprocess.run([sys.executable, "-m", "provisioner", "--config", str(config),
                             "image", "build", kickstart, "--name", name, "--activate",
                             *(["--force"] if force else []),
                             *(arg for var in variables for arg in ("--var", var))],
                            capture_output=True, text=True, timeout=900, env=lab_env(),
                            check=False)
    assert result.returncode == 0, f"image build failed:\n{result.stdout}\n{result.stderr}"
    return os.readlink(images / name / "current")


#: the Debian images of the `full` e2e tests, built once per machine with their .deb cache
E2E_CACHE = Path(os.environ.get("PROVISIONER_E2E_CACHE", "/var/cache/provisioner/e2e"))


def cached_debian_image(name: str, variables: Sequence[str] = ()) -> Path:
    """templates/kickstart/debian.ks.j2 built as `name` into E2E_CACHE's catalog (a build
    whose inputs are unchanged is a cache hit); returns the catalog directory."""
    require_lab()
    images = E2E_CACHE / "images"
    images.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    version = build_image(images, name, kickstart="kickstart/debian.ks.j2",
                          cache=E2E_CACHE / "cache", variables=variables)
    size = (images / name / version / "image.cpio.xz").stat().st_size
    print(f"{name} image {version}: {size >> 20} MiB xz, build or cache hit in "
          f"{time.monotonic() - began:.0f} s")
    return images


@pytest.fixture(scope="session")
def e2e_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_lab()
    images = tmp_path_factory.mktemp("e2e") / "images"
    images.mkdir()
    build_image(images)
    return images


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


def dump(lab: Lab) -> str:
    """Consoles, timelines and service logs: what a failed e2e test prints."""
    parts = []
    try:
        views = snapshot(lab, [n.qemu.mac for n in lab.state.nodes])
    except Exception as exc:  # a broken store must not hide the consoles
        views = {}
        parts.append(f"(store unreadable: {exc})")
    for node in lab.state.nodes:
        view = views.get(node.qemu.mac)
        parts.append(f"===== {node.qemu.name} {node.qemu.firmware} {node.qemu.mac} state="
                     f"{view.state if view else '?'}\n--- console {node.qemu.console}:\n"
                     f"{tail(node.qemu.console, 40)}\n--- events:\n"
                     f"{view.timeline() if view else '  (none)'}")
    for proc in lab.state.procs:
        parts.append(f"===== {proc.role} log {proc.log}:\n{tail(proc.log, 25)}")
    return "\n".join(parts)


@pytest.fixture
def make_lab(request: pytest.FixtureRequest, tmp_path: Path,
             e2e_images: Path) -> Iterator[MakeLab]:
    labs: list[Lab] = []

    def make(**kwargs: Any) -> Lab:
        options = LabOptions(tmp_path / f"lab{len(labs)}",
                             namespace=f"pv-e2e-{secrets.token_hex(3)}", images=e2e_images,
                             cache=CACHE, **kwargs)
        lab = Lab.create(options, say=print)
        labs.append(lab)
        return lab

    yield make
    report = getattr(request.node, "rep_call", None)
    for lab in labs:
        if report is None or report.failed:
            print(dump(lab))
        lab.down(say=print)


def boot(lab: Lab, firmware: str, *, register: bool) -> LabNode:
    node = lab.new_node(firmware)
    if register:
        lab.register(node)
    lab.start_node(node)
    return node


def boot_and_wait(lab: Lab, nodes: list[LabNode], offsets: dict[str, int] | None = None,
                  since: float | None = None) -> None:
    """Wait for `nodes` to be ready; consoles are checked for failures from `offsets`
    (default: from the start) and events counted from `since`."""
    wait_ready(lab, nodes, since=since or 0.0,
               offsets=offsets or {n.qemu.mac: 0 for n in nodes})


def console(node: LabNode) -> str:
    return read_console(node.qemu.console)


def run_job(lab: Lab, command: str) -> dict[str, Any]:
    """A root job through the lab's scheduler, waited for (bounded); returns the job."""
    url = f"{lab.state.scheduler_url}/sched/v1/jobs"
    token = lab.state.scheduler_token
    # The lab images have no account but root; root jobs need as_root and the admin token.
    answer = lab.ns.http("POST", url, body={"cpus": 1, "memory_mib": 64, "walltime": 60,
                                            "as_root": True, "command": command}, token=token)
    assert answer.status == 201, answer
    job_id = answer.json()["id"]
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        job = lab.ns.http("GET", f"{url}/{job_id}", token=token).json()
        if job["state"] not in ("pending", "running"):
            return dict(job)
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish in {JOB_TIMEOUT:.0f} s: {job}")
