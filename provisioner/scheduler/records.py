"""The scheduler's records in the store under keys.SCHED_ROOT, cached in memory, written with
compare-and-swap.

Layout: keys.sched_node(NAME) and keys.sched_job(ID), one JSON record each. The scheduler
service is the one writer; every write expects the revision it last saw, so a second writer
(or a restarted one) cannot silently undo a change: a Conflict re-reads the key and applies
the change again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import TypeVar

from provisioner.errors import Conflict
from provisioner.inventory import keys
from provisioner.scheduler.models import (
    Job,
    JobState,
    SchedNode,
    job_from_dict,
    node_from_dict,
    to_dict,
)
from provisioner.store.base import KeyValueStore

RETRIES = 8  # CAS attempts before a write gives up with Conflict
R = TypeVar("R", SchedNode, Job)


class JobCache(dict[str, tuple[Job, int]]):
    """Jobs by id (with their revisions), plus an index of the unfinished ones: dispatch,
    polls and node views look only at those, however many finished jobs pile up."""

    def __init__(self) -> None:
        super().__init__()
        self.active: dict[str, Job] = {}
        self.pending: set[str] = set()  # a registration asks "any job waiting?" per request
        self.last_seq = 0  # the next submission is last_seq + 1

    def __setitem__(self, key: str, value: tuple[Job, int]) -> None:
        super().__setitem__(key, value)
        self.last_seq = max(self.last_seq, value[0].seq)
        if value[0].state.finished:
            self.active.pop(key, None)
        else:
            self.active[key] = value[0]
        if value[0].state is JobState.PENDING:
            self.pending.add(key)
        else:
            self.pending.discard(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.active.pop(key, None)
        self.pending.discard(key)


def _dumps(record: SchedNode | Job) -> bytes:
    return json.dumps(to_dict(record), separators=(",", ":")).encode()


class Records:
    """Nodes and jobs by key, with their store revisions."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        self.nodes: dict[str, tuple[SchedNode, int]] = {}
        self.jobs = JobCache()

    async def load(self) -> None:
        for kv in (await self.store.range(keys.SCHED_ROOT)).items:
            data = json.loads(kv.value)
            if kv.key.startswith(keys.SCHED_NODES):
                node = node_from_dict(data)
                self.nodes[node.name] = (node, kv.mod_revision)
            elif kv.key.startswith(keys.SCHED_JOBS):
                job = job_from_dict(data)
                self.jobs[job.id] = (job, kv.mod_revision)

    async def node(self, name: str, change: Callable[[SchedNode | None], SchedNode]
                   ) -> SchedNode:
        return await self._update(keys.sched_node(name), self.nodes, name, change, node_from_dict)

    async def job(self, job_id: str, change: Callable[[Job | None], Job]) -> Job:
        return await self._update(keys.sched_job(job_id), self.jobs, job_id, change, job_from_dict)

    async def create_job(self, job: Job) -> bool:
        """Write a new job under its id; False (and the cache refreshed) when it is taken."""
        try:
            rev = await self.store.put(keys.sched_job(job.id), _dumps(job), expect=0)
        except Conflict:
            await self._reload(keys.sched_job(job.id), self.jobs, job.id, job_from_dict)
            return False
        self.jobs[job.id] = (job, rev)
        return True

    async def forget_job(self, job_id: str) -> bool:
        """Delete a job's record, expecting the cached revision: a job changed meanwhile (it
        cannot be, once finished, but another scheduler process may share the store) stays."""
        cached = self.jobs.get(job_id)
        if cached is None:
            return False
        try:
            await self.store.delete(keys.sched_job(job_id), expect=cached[1])
        except Conflict:
            await self._reload(keys.sched_job(job_id), self.jobs, job_id, job_from_dict)
            return False
        with contextlib.suppress(KeyError):
            del self.jobs[job_id]
        return True

    # -- compare-and-swap writes -----------------------------------------------------------

    async def _update(self, key: str, cache: dict[str, tuple[R, int]], ident: str,
                      change: Callable[[R | None], R], parse: Callable[[dict[str, object]], R]
                      ) -> R:
        """Apply `change` to the cached record and write it if it changed, expecting the
        cached revision; on Conflict read the key again and re-apply."""
        for _ in range(RETRIES):
            cur, rev = cache.get(ident, (None, 0))
            new = change(cur)
            if new == cur:
                return new
            try:
                cache[ident] = (new, await self.store.put(key, _dumps(new), expect=rev))
                return new
            except Conflict:
                await self._reload(key, cache, ident, parse)
        raise Conflict(f"{key} keeps changing under the scheduler; retry")

    async def _reload(self, key: str, cache: dict[str, tuple[R, int]], ident: str,
                      parse: Callable[[dict[str, object]], R]) -> None:
        kv = await self.store.get(key)
        if kv is None:
            with contextlib.suppress(KeyError):  # del, not pop: JobCache keeps its index
                del cache[ident]
        else:
            cache[ident] = (parse(json.loads(kv.value)), kv.mod_revision)
