"""The Slurm controller the Slurm e2e test runs in the lab (tests/support/slurm_cluster.py),
in a namespace of its own on the server address: a client on the other side of the veth
reaches slurmctld at that address, the appliance's settings for it load, its overlay carries
the key and the nodes' slurm.conf, and its handoff registers a node declared with its NodeAddr.

This is the short version of tests/e2e/test_debian_slurm.py (full), which boots a real node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.boot.slurmfiles import MUNGE_KEY_PATH, SLURM_CONF_PATH, slurm_node_files
from provisioner.config import load_settings
from provisioner.handoff import open_handoff
from provisioner.handoff.base import HandoffNode
from provisioner.lab.netns import Namespace, NetnsPair
from provisioner.nodes.model import MacAddress
from tests.support.slurm_cluster import SlurmCluster


@pytest.fixture(scope="module")
def pair() -> Iterator[NetnsPair]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    with NetnsPair.create() as created:
        yield created


@pytest.fixture(scope="module")
def cluster(pair: NetnsPair, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[SlurmCluster]:
    started = SlurmCluster(tmp_path_factory.mktemp("slurm-ns"), namespace=pair.server_ns,
                           host=str(pair.server_ip),
                           nodes=f"NodeName=node001 NodeAddr={pair.client_ip} CPUs=1 "
                                 "RealMemory=512 State=FUTURE")
    started.start()
    try:
        yield started
    finally:
        started.stop()


def test_slurmctld_answers_on_the_head_address_from_the_other_side(
        pair: NetnsPair, cluster: SlurmCluster) -> None:
    # From the client namespace, where a node would be: only the veth leads to the server.
    result = subprocess.run(pair.command(pair.client_ns, ["scontrol", "ping"]),
                            env={**os.environ, **cluster.env}, capture_output=True, text=True,
                            timeout=30, check=False)
    assert "is UP" in result.stdout, result.stdout + result.stderr
    assert f"({pair.server_ip})" in cluster.conf.read_text()


def test_the_nodes_slurm_conf_uses_the_default_munge_socket(cluster: SlurmCluster) -> None:
    head, node = cluster.conf.read_text(), cluster.node_conf.read_text()
    assert "AuthInfo=socket=" in head and "AuthInfo" not in node
    assert f"SlurmctldHost={head.split('SlurmctldHost=')[1].split()[0]}" in node
    assert str(cluster.root) not in node  # no path of the head's on a node


async def register(handoff_settings: Path) -> None:
    handoff = open_handoff(load_settings(handoff_settings, env={}))
    await handoff.register(HandoffNode("node001", MacAddress("52:54:00:00:00:01"), cpus=1,
                                       memory_mib=512))


def test_an_appliance_configured_for_it_ships_the_files_and_registers_the_node(
        pair: NetnsPair, cluster: SlurmCluster, tmp_path: Path) -> None:
    toml = tmp_path / "appliance.toml"
    toml.write_text(f'data_dir = "{tmp_path}"\n[handoff]\n{cluster.handoff_settings()}\n')
    h = load_settings(toml, env={}).handoff
    files = slurm_node_files(h.kind, h.munge_key, h.slurm_conf)
    assert files is not None
    shipped = {entry.path: entry for entry in files.entries()}
    assert shipped[SLURM_CONF_PATH].data == cluster.node_conf.read_bytes()
    assert shipped[MUNGE_KEY_PATH].data == cluster.munge_key.read_bytes()
    assert "FUTURE" in cluster.scontrol("show", "node", "node001", "-o", "--future")
    # The appliance's scontrol runs where the appliance does: in the server namespace.
    with Namespace(pair.server_ns) as ns:
        ns.run(lambda: register(toml))
    shown = cluster.scontrol("show", "node", "node001", "-o")
    assert "State=IDLE" in shown and f"NodeAddr={pair.client_ip}" in shown, shown
