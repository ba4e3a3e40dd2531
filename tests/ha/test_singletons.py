"""The once-only work of a head runs while it leads and stops the moment it does not, on every
store backend (tests/conftest.py): two heads in one process, each with its own supervisor."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from provisioner.ha.election import Election
from provisioner.ha.singletons import Singletons
from provisioner.runtime.supervisor import Supervisor, TaskFactory
from provisioner.store.base import KeyValueStore

TTL = 2.0
BOUND = 30.0  # generous: the machine is shared


class Work:
    """Counts which head runs the work, and how often it was started."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.starts: list[str] = []

    def factory(self, head: str) -> TaskFactory:
        async def run() -> None:
            self.running.add(head)
            self.starts.append(head)
            try:
                await asyncio.Event().wait()
            finally:
                self.running.discard(head)

        return run


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(BOUND):
        while not check():
            await asyncio.sleep(0.02)


Heads = tuple[Work, dict[str, Singletons], dict[str, asyncio.Task[None]]]


@pytest.fixture
async def heads(store: KeyValueStore) -> AsyncIterator[Heads]:
    work = Work()
    heads: dict[str, Singletons] = {}
    tasks: dict[str, asyncio.Task[None]] = {}  # each head's run()
    for name in ("head1", "head2"):
        heads[name] = Singletons(Election(store, "work", name, ttl=TTL), Supervisor())
        heads[name].add("sweep", work.factory(name))
    yield work, heads, tasks
    for task in tasks.values():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for head in heads.values():
        await head.supervisor.close()


def start(heads: Heads, name: str) -> None:
    _, singletons, tasks = heads
    tasks[name] = asyncio.create_task(singletons[name].run())


async def test_only_the_leader_runs_the_work_and_a_stopped_leader_hands_it_on(
        heads: Heads) -> None:
    work, singletons, tasks = heads
    start(heads, "head1")
    await until(lambda: work.running == {"head1"})
    start(heads, "head2")
    await asyncio.sleep(0.3)
    assert work.running == {"head1"} and not singletons["head2"].leading
    tasks.pop("head1").cancel()  # a graceful stop resigns: no wait for the lease
    await until(lambda: work.running == {"head2"})
    assert work.starts == ["head1", "head2"]


async def test_a_lost_lead_stops_the_work_before_it_starts_again(
        store: KeyValueStore,
        heads: Heads) -> None:
    work, singletons, _ = heads
    start(heads, "head1")
    await until(lambda: work.running == {"head1"})
    term = singletons["head1"].terms[-1]
    overlaps = 0

    def watch() -> bool:
        nonlocal overlaps
        overlaps += len(work.running) > 1
        return len(work.starts) == 2 and len(work.running) == 1

    start(heads, "head2")
    await store.revoke(term.lease)  # head1's lease is gone, as after a pause or a partition
    await until(watch)  # either head may win the new term: both campaign once it is free
    assert overlaps == 0
    assert len(work.starts) == 2
