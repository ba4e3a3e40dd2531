"""SlurmHandoff against a real slurmctld (Debian's Slurm 22.05) started by the fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.errors import NotFound
from provisioner.handoff.base import HandoffNode, HandoffRejected
from provisioner.handoff.outbox import HandoffQueue
from provisioner.handoff.slurm import SlurmHandoff
from provisioner.inventory import keys
from provisioner.nodes.model import MacAddress
from provisioner.store.sqlite import SqliteStore
from tests.handoff.conftest import Confirmations
from tests.support.slurm_cluster import SlurmCluster
from tests.support.waiting import eventually

MAC = MacAddress("52:54:00:00:00:02")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def node(name: str) -> HandoffNode:
    return HandoffNode(name, MAC, cpus=2, memory_mib=1024)


async def test_register_drain_resume_on_a_future_node(slurm: SlurmCluster) -> None:
    handoff = SlurmHandoff(env=slurm.env)
    assert "FUTURE" in await handoff.state("node001")
    await handoff.register(node("node001"))
    assert "IDLE" in await handoff.state("node001")
    await handoff.register(node("node001"))  # already in service: still fine
    assert await handoff.is_idle("node001")
    await handoff.drain("node001", "reimage to base:2")
    assert "DRAIN" in await handoff.state("node001")
    assert "Reason=reimage to base:2" in slurm.scontrol("show", "node", "node001", "-o")
    assert await handoff.is_idle("node001")  # drained and running nothing
    await handoff.resume("node001")
    assert "DRAIN" not in await handoff.state("node001")


async def test_unknown_nodes_are_refused(slurm: SlurmCluster) -> None:
    handoff = SlurmHandoff(env=slurm.env)
    with pytest.raises(HandoffRejected, match=r"slurm\.conf"):
        await handoff.register(node("ghost"))
    with pytest.raises(NotFound):
        await handoff.drain("ghost", "x")


async def test_outbox_delivers_to_slurm(slurm: SlurmCluster, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    confirmed = Confirmations()
    queue = HandoffQueue(store, SlurmHandoff(env=slurm.env), confirmed)
    try:
        await queue.start()
        await queue.submit(node("node002"))
        await eventually(lambda: _confirmed(confirmed))
        assert "IDLE" in slurm.scontrol("show", "node", "node002", "-o")
        assert not (await store.range(keys.OUTBOX)).items
    finally:
        await queue.stop()
        await store.close()


async def _confirmed(confirmed: Confirmations) -> bool:
    return confirmed.macs == [MAC]


async def test_a_node_outside_the_expected_partition_is_refused(slurm: SlurmCluster) -> None:
    await SlurmHandoff(env=slurm.env, partition="batch").register(node("node003"))
    assert "IDLE" in slurm.scontrol("show", "node", "node003", "-o")
    with pytest.raises(HandoffRejected, match="not in partition gpu"):
        await SlurmHandoff(env=slurm.env, partition="gpu").register(node("node004"))
