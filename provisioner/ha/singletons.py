"""Work that must happen once across the heads runs on the head that leads its election.

With several heads on one store, the callback deadline sweep, the handoff outbox's delivery,
the rollouts' resumption, the boot retries and retention would each run on every head: two
handoffs for one boot, two power cycles for one node. `Singletons` holds that work for one
head: registered by name, it runs only while the head leads (ha/election.py).

`run()` is itself a supervised task (runtime/supervisor.py): it campaigns; once this head leads
it starts every registered task under the supervisor (so /healthz shows them) and keeps the
lead; the moment the lead is lost it stops them all, before the store can give the lead to
another head (Election.hold), and campaigns again. Stopped (the service closing), it stops them
and resigns, so that another head takes over at once instead of after the lease's ttl.
"""

from __future__ import annotations

import asyncio
import logging

from provisioner.ha.election import Election, Term
from provisioner.runtime.supervisor import Supervised, Supervisor, TaskFactory

log = logging.getLogger(__name__)


class Singletons:
    """The once-only work of one head, run while `election` is won (see the module
    docstring)."""

    def __init__(self, election: Election, supervisor: Supervisor) -> None:
        self.election, self.supervisor = election, supervisor
        self._work: list[tuple[str, TaskFactory]] = []
        self._running: list[Supervised] = []
        #: terms this head has led (for logs and tests: a count of takeovers)
        self.terms: list[Term] = []

    @property
    def leading(self) -> bool:
        return self.election.term is not None

    def add(self, name: str, factory: TaskFactory) -> None:
        """Run `factory()` as task `name` whenever this head leads."""
        self._work.append((name, factory))

    async def run(self) -> None:
        """Campaign, run the work while leading, stop it when the lead is lost; forever."""
        while True:
            term = await self.election.campaign()
            self.terms.append(term)
            try:
                self._start()
                await self.election.hold()
            except BaseException:  # stopped, or a fault: no work runs without the lead
                await asyncio.shield(self._stop())
                await asyncio.shield(self.election.resign(term))
                raise
            await self._stop()
            log.warning("%s no longer leads %s: its work stopped", term.leader, term.election)

    def _start(self) -> None:
        self._running = [self.supervisor.spawn(name, factory) for name, factory in self._work]

    async def _stop(self) -> None:
        running, self._running = self._running, []
        await asyncio.gather(*(task.stop() for task in running))  # all cancelled at once
