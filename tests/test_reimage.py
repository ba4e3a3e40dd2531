"""Rollout logic with the real Lifecycle and inventory on a memory store; the scheduler and the
nodes' power are in-process fakes (a fake node "boots" by calling the lifecycle back, as the
real /init does through the API). The QEMU proof is the lab's e2e reimage test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from provisioner.errors import HandoffError, NotFound, PowerError
from provisioner.inventory.locks import LockHeld, StoreLock
from provisioner.inventory.repository import Inventory
from provisioner.nodes.lifecycle import Lifecycle
from provisioner.nodes.model import MacAddress, Node, NodeState
from provisioner.nodes.progress import unfinished
from provisioner.nodes.rollout import (
    LOCK,
    LOCK_TTL,
    Progress,
    Rollout,
    RolloutRequest,
    Step,
    load_status,
    waves,
)
from provisioner.power.base import PowerDriver, PowerState
from provisioner.store.memory import MemoryStore

S = NodeState


@dataclass
class FakeScheduler:
    busy: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_resume: bool = False

    async def drain(self, name: str, reason: str) -> None:
        self.calls.append(("drain", name))

    async def resume(self, name: str) -> None:
        if self.fail_resume:
            raise HandoffError("scheduler down")
        self.calls.append(("resume", name))

    async def is_idle(self, name: str) -> bool:
        self.calls.append(("is_idle", name))
        return name not in self.busy


class FakeNode:
    """A node's power: `cycle` makes it boot `boots` (a version) and call back, or not."""

    kind = "fake"

    def __init__(self, lifecycle: Lifecycle, node: Node, boots: str | None, *,
                 error: bool = False, delay: float = 0.02) -> None:
        self.lifecycle, self.node, self.boots, self.error = lifecycle, node, boots, error
        self.delay = delay
        self.cycles = 0
        self.log: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def status(self) -> PowerState:
        return PowerState.ON

    async def on(self) -> None: ...

    async def off(self) -> None: ...

    async def soft_off(self) -> None: ...

    async def cycle(self) -> None:
        self.log.append("cycle")
        if self.error:
            raise PowerError("BMC 10.0.0.9 did not answer; check power_address")
        self.cycles += 1
        if self.boots is not None:
            self.tasks.append(asyncio.create_task(self._boot(self.boots)))

    async def _boot(self, version: str) -> None:
        await asyncio.sleep(self.delay)
        await self.lifecycle.boot_script_served(self.node.mac, "compute", version)
        await self.lifecycle.booted(self.node.mac, {"cpus": 2, "memory_mib": 512}, version,
                                    image="compute")


class FakeBmc(FakeNode):
    """A node with a BMC that can set a one-time network boot."""

    async def boot_pxe_once(self) -> None:
        self.log.append("pxe")


class Cluster:
    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.lifecycle = Lifecycle(inventory, handoff=None)  # booted -> ready at once
        self.scheduler = FakeScheduler()
        self.behaviour: dict[str, dict[str, object]] = {}
        self.power: dict[str, FakeNode] = {}  # the first driver opened for each node
        self.cycles: dict[str, int] = {}  # drivers opened, by node: one per power-cycle
        self.progress: list[Progress] = []

    async def add(self, name: str, index: int, state: NodeState = S.READY) -> None:
        await self.inventory.add_node(Node(MacAddress(f"52:54:00:00:00:{index:02x}"), name,
                                           image="compute:1", state=state))

    async def power_for(self, node: Node) -> PowerDriver:
        options = self.behaviour.get(node.name, {})
        boots = options.get("boots", "2")
        kind = FakeBmc if options.get("bmc") else FakeNode
        delay = options.get("delay", 0.02)
        driver = kind(self.lifecycle, node, boots if isinstance(boots, str) else None,
                      error=bool(options.get("error")),
                      delay=delay if isinstance(delay, float) else 0.02)
        self.power.setdefault(node.name, driver)
        self.cycles[node.name] = self.cycles.get(node.name, 0) + 1
        return driver

    def rollout(self, *, resumable: bool = False) -> Rollout:
        return Rollout(self.inventory, self.lifecycle, self.scheduler, self.power_for,
                       on_progress=self.progress.append, poll=0.01, resumable=resumable)

    async def state(self, name: str) -> Node:
        return (await self.inventory.get_node(name)).value


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    store = MemoryStore()
    inventory = Inventory(store)
    await inventory.start()
    cl = Cluster(inventory)
    for index, name in enumerate(["n1", "n2", "n3"], 1):
        await cl.add(name, index)
    yield cl
    for driver in cl.power.values():
        for task in driver.tasks:
            task.cancel()
    await inventory.stop()
    await store.close()


def request(*nodes: str, **options: object) -> RolloutRequest:
    defaults: dict[str, object] = {"image": "compute:2", "version": "2", "wave": 2,
                                   "max_failures": 1, "timeout": 2.0, "idle_timeout": 0.3}
    return RolloutRequest(nodes=nodes, **{**defaults, **options})  # type: ignore[arg-type]


def test_waves() -> None:
    assert waves(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    assert waves(["a"], 0) == [["a"]]


async def test_rolls_in_waves_and_persists(cluster: Cluster) -> None:
    status = await cluster.rollout().run(request("n1", "n2", "n3"))
    assert status.state == "succeeded"
    for name in ("n1", "n2", "n3"):
        node = await cluster.state(name)
        assert (node.state, node.image) == (S.READY, "compute:2")
        assert status.nodes[name].step is Step.DONE
        assert cluster.power[name].cycles == 1
    calls = cluster.scheduler.calls
    # wave 2 (n3) is drained only after wave 1 (n1, n2) was resumed
    assert calls.index(("drain", "n3")) > max(calls.index(("resume", "n1")),
                                              calls.index(("resume", "n2")))
    kinds = [e.kind for e in await cluster.inventory.list_events(MacAddress("52:54:00:00:00:01"))]
    assert kinds == ["draining", "reimaging", "provisioning", "booted", "ready"]
    saved = await load_status(cluster.inventory)
    assert saved.id == status.id and saved.state == "succeeded"
    assert saved.nodes["n3"].step is Step.DONE and saved.nodes["n3"].wave == 2
    assert [p.step for p in cluster.progress if p.node == "n1"] == [
        "draining", "waiting_idle", "power_cycle", "waiting_callback", "done"]


async def test_stops_after_max_failures(cluster: Cluster) -> None:
    cluster.behaviour["n1"] = {"boots": None}  # never calls back
    status = await cluster.rollout().run(request("n1", "n2", "n3", wave=1, timeout=0.3))
    assert status.state == "stopped"
    assert status.nodes["n1"].step is Step.FAILED
    assert "no callback within 0.3 s" in status.nodes["n1"].message
    assert [status.nodes[n].step for n in ("n2", "n3")] == [Step.SKIPPED, Step.SKIPPED]
    assert (await cluster.state("n1")).state is S.FAILED
    assert ("resume", "n1") not in cluster.scheduler.calls  # a broken node gets no jobs
    assert not any(name in ("n2", "n3") for _, name in cluster.scheduler.calls)
    assert (await cluster.state("n2")).image == "compute:1"
    assert (await load_status(cluster.inventory, status.id)).state == "stopped"


async def test_continues_below_max_failures(cluster: Cluster) -> None:
    cluster.behaviour["n1"] = {"error": True}
    status = await cluster.rollout().run(request("n1", "n2", "n3", wave=1, max_failures=2))
    assert status.state == "failed"
    assert "power-cycle failed: BMC 10.0.0.9" in status.nodes["n1"].message
    assert [status.nodes[n].step for n in ("n2", "n3")] == [Step.DONE, Step.DONE]


async def test_wrong_version_fails_the_node(cluster: Cluster) -> None:
    cluster.behaviour["n2"] = {"boots": "1"}
    status = await cluster.rollout().run(request("n2"))
    assert status.nodes["n2"].step is Step.FAILED
    assert "booted version 1, not 2" in status.nodes["n2"].message
    assert (await cluster.state("n2")).state is S.FAILED


async def test_busy_node_waits_then_is_left_alone(cluster: Cluster) -> None:
    cluster.scheduler.busy.add("n1")
    status = await cluster.rollout().run(request("n1"))
    assert status.nodes["n1"].step is Step.FAILED
    assert "still running jobs" in status.nodes["n1"].message
    node = await cluster.state("n1")
    assert (node.state, node.image) == (S.READY, "compute:1")  # untouched and resumed
    assert cluster.scheduler.calls[-1] == ("resume", "n1")
    assert "n1" not in cluster.power


async def test_force_does_not_wait(cluster: Cluster) -> None:
    cluster.scheduler.busy.add("n1")
    status = await cluster.rollout().run(request("n1", force=True))
    assert status.nodes["n1"].step is Step.DONE
    assert ("is_idle", "n1") not in cluster.scheduler.calls


async def test_failed_node_can_be_reimaged(cluster: Cluster) -> None:
    await cluster.lifecycle.fail(MacAddress("52:54:00:00:00:03"), "disk died")
    status = await cluster.rollout().run(request("n3", version=None, image="compute"))
    assert status.nodes["n3"].step is Step.DONE
    assert (await cluster.state("n3")).image == "compute"


async def test_unknown_node_changes_nothing(cluster: Cluster) -> None:
    with pytest.raises(NotFound):
        await cluster.rollout().run(request("n1", "nope"))
    assert cluster.scheduler.calls == []
    with pytest.raises(NotFound, match="no reimage has run yet"):
        await load_status(cluster.inventory)


async def test_one_time_network_boot_before_the_cycle(cluster: Cluster) -> None:
    cluster.behaviour["n1"] = {"bmc": True}
    status = await cluster.rollout().run(request("n1", "n2"))
    assert status.state == "succeeded"
    assert cluster.power["n1"].log == ["pxe", "cycle"]
    assert cluster.power["n2"].log == ["cycle"]


async def test_start_then_execute_and_interrupt(cluster: Cluster) -> None:
    cluster.behaviour["n1"] = {"boots": None}
    rollout = cluster.rollout()
    started = await rollout.start(request("n1", timeout=30))
    assert (await load_status(cluster.inventory, started.id)).state == "running"
    assert cluster.scheduler.calls == []  # nothing touched before execute
    task = asyncio.create_task(rollout.execute(request("n1", timeout=30)))
    for _ in range(200):
        if rollout.status is not None and rollout.status.nodes["n1"].step is \
                Step.WAITING_CALLBACK:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    saved = await load_status(cluster.inventory, started.id)
    assert saved.state == "interrupted" and saved.nodes["n1"].step is Step.WAITING_CALLBACK


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    pytest.fail("the rollout did not get there in 10 s")


async def test_a_rollout_cut_short_resumes_at_its_wave_and_redoes_none(
        cluster: Cluster) -> None:
    await cluster.add("n4", 4)
    cluster.behaviour["n3"] = {"delay": 0.5}  # a slow boot: the appliance stops meanwhile
    first = cluster.rollout(resumable=True)
    task = asyncio.create_task(first.run(request("n1", "n2", "n3", "n4", wave=1, timeout=30)))
    await _until(lambda: first.status is not None
                 and first.status.nodes["n3"].step is Step.WAITING_CALLBACK)
    task.cancel()  # the appliance stops (or its runner task dies) in the middle of wave 3
    with pytest.raises(asyncio.CancelledError):
        await task
    assert first.status is not None
    saved = await load_status(cluster.inventory, first.status.id)
    assert (saved.state, saved.waves_done) == ("running", 2)  # left for the next start
    assert [s.id for s in await unfinished(cluster.inventory)] == [saved.id]
    assert await first.lock.holder() is None  # a stop lets the lock go at once

    status = await cluster.rollout(resumable=True).resume(saved.id)
    assert status.state == "succeeded"
    for name in ("n1", "n2", "n3", "n4"):
        node = await cluster.state(name)
        assert (node.state, node.image) == (S.READY, "compute:2")
        assert cluster.cycles[name] == 1, name  # no wave redone, n3 not cycled twice
    drains = [name for call, name in cluster.scheduler.calls if call == "drain"]
    assert drains == ["n1", "n2", "n3", "n4"]
    assert await unfinished(cluster.inventory) == []
    assert "resumed" in [p.step for p in cluster.progress]


async def test_one_rollout_at_a_time_and_a_dead_runner_is_taken_over(
        cluster: Cluster) -> None:
    cluster.behaviour["n1"] = {"delay": 0.3}
    first = cluster.rollout(resumable=True)
    await first.start(request("n1", timeout=30))
    with pytest.raises(LockHeld, match="reimage is held by"):
        await cluster.rollout().start(request("n2"))
    assert first.status is not None
    with pytest.raises(LockHeld):  # a second appliance cannot run it either
        await cluster.rollout(resumable=True).resume(first.status.id)
    # The runner dies without a word: its lock stays until it expires.
    dead = StoreLock(cluster.inventory.store, LOCK, first.lock.owner,
                     clock=lambda: time.time() - LOCK_TTL - 1)
    first.lock._revision = 0  # it is dead: it will neither renew nor release
    await dead.acquire()  # as it would look once the expiry has passed
    status = await cluster.rollout(resumable=True).resume(first.status.id)
    assert status.state == "succeeded" and (await cluster.state("n1")).image == "compute:2"
    again = await cluster.rollout().resume(first.status.id)  # over: nothing is done
    assert again.state == "succeeded" and cluster.cycles["n1"] == 1
