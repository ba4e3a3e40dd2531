"""End to end with Slurm: the Debian image of templates/kickstart/debian.ks.j2 built with
`--var slurm=true` boots diskless in QEMU (BIOS) in a lab whose appliance hands its nodes to a
real slurmctld (Debian's 22.05) running in the lab's namespace on the head's address. The node
gets the munge key and slurm.conf in its overlay, its slurmd registers with slurmctld (IDLE,
not NOT_RESPONDING), and a job that srun starts from the head runs on the node.

The node has a reserved address, which slurm.conf names as its NodeAddr: slurmctld reaches the
node's slurmd by it, as a site's slurm.conf would name its nodes.

The image is built once into PROVISIONER_E2E_CACHE (default /var/cache/provisioner/e2e), as in
test_debian.py. Run it with `PROVISIONER_FULL=1 pytest tests/e2e/test_debian_slurm.py`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.lab.lab import Lab
from provisioner.lab.labconfig import LabOptions
from provisioner.lab.netns import LabNetwork
from provisioner.lab.observe import wait_ready
from tests.support.labs import CACHE, cached_debian_image, dump
from tests.support.slurm_cluster import SlurmCluster

#: `full`: the image build adds minutes on a machine without the cached image.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.full]

NAME = "node001"
REGISTER_TIMEOUT = 180.0  # seconds after `ready` for slurmctld to hear from the node's slurmd
JOB_TIMEOUT = 180.0  # seconds for srun (TCG, shared cores)


@pytest.fixture(scope="module")
def slurm_images() -> Path:
    return cached_debian_image("debian-slurm", ["slurm=true"])


@pytest.fixture
def slurm_lab(request: pytest.FixtureRequest, tmp_path: Path,
              slurm_images: Path) -> Iterator[tuple[Lab, SlurmCluster, str]]:
    network = LabNetwork(f"pv-slurm-{secrets.token_hex(3)}")
    node_ip = str(network.subnet.network_address + 50)  # reserved, below the DHCP pool
    cluster = SlurmCluster(tmp_path / "slurm", namespace=network.namespace,
                           host=network.server_ip,
                           nodes=f"NodeName={NAME} NodeAddr={node_ip} CPUs=1 RealMemory=512 "
                                 "State=FUTURE")
    cluster.write()  # the appliance reads the key and the nodes' slurm.conf at its start
    options = LabOptions(tmp_path / "lab", namespace=network.namespace, images=slurm_images,
                         cache=CACHE, image="debian-slurm", discovery=False,
                         handoff=cluster.handoff_settings())
    lab = Lab.create(options, say=print)
    try:
        cluster.start()
        yield lab, cluster, node_ip
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(dump(lab))
            if cluster.conf.exists():
                print(f"===== slurmctld log:\n{_log(cluster)}")
        cluster.stop()
        lab.down(say=print)


def _log(cluster: SlurmCluster) -> str:
    try:
        return cluster.log()
    except OSError as exc:
        return f"(none: {exc.strerror})"


def node_fields(cluster: SlurmCluster) -> dict[str, str]:
    out = cluster.scontrol("show", "node", NAME, "-o", "--future")
    return dict(word.partition("=")[::2] for word in out.split() if "=" in word)


def wait_registered(cluster: SlurmCluster) -> dict[str, str]:
    """slurmctld's view of the node once its slurmd answers: IDLE, no NOT_RESPONDING."""
    deadline = time.monotonic() + REGISTER_TIMEOUT
    fields = node_fields(cluster)
    while time.monotonic() < deadline:
        flags = set(fields.get("State", "").split("+"))
        if "IDLE" in flags and not flags & {"NOT_RESPONDING", "FUTURE", "DOWN", "DRAIN"}:
            return fields
        time.sleep(2)
        fields = node_fields(cluster)
    raise AssertionError(f"slurmd of {NAME} did not register in {REGISTER_TIMEOUT:.0f} s: "
                         f"{fields}\n{cluster.log()}")


def test_a_slurm_job_runs_on_a_booted_debian_node(
        slurm_lab: tuple[Lab, SlurmCluster, str]) -> None:
    lab, cluster, node_ip = slurm_lab
    assert "FUTURE" in node_fields(cluster).get("State", ""), node_fields(cluster)
    began = time.monotonic()
    node = lab.new_node("bios", memory_mib=1536)
    lab.register(node, ip=node_ip)
    lab.start_node(node)
    # The lab's own scheduler plays no part: the handoff is Slurm's.
    wait_ready(lab, [node], since=0.0, need_scheduler=False)
    ready = time.monotonic() - began
    fields = wait_registered(cluster)
    print(f"node ready {ready:.0f} s after power on, IDLE in slurmctld after "
          f"{time.monotonic() - began:.0f} s")
    assert fields["NodeAddr"] == node_ip, fields

    began = time.monotonic()
    job = cluster.run("srun", "-N1", "-w", NAME, "--chdir=/tmp", "sh", "-c",
                      "hostname; cat /proc/cmdline; stat -c '%n %a %U' /etc/munge/munge.key; "
                      "echo job=$SLURM_JOB_ID node=$SLURMD_NODENAME",
                      timeout=JOB_TIMEOUT)
    print(f"srun took {time.monotonic() - began:.1f} s")
    assert job.returncode == 0, f"srun failed:\n{job.stdout}\n{job.stderr}\n{cluster.log()}"
    lines = job.stdout.splitlines()
    assert lines[0] == NAME, job.stdout
    # The node's kernel command line is the one our boot script gave it.
    assert "initrd=overlay.cpio.xz" in lines[1], job.stdout
    # The overlay's key, as munged needs it: the munge user's alone.
    assert "/etc/munge/munge.key 400 munge" in job.stdout, job.stdout
    assert f"node={NAME}" in job.stdout and "job=" in job.stdout, job.stdout
