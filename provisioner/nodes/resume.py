"""The appliance takes up the rolling reimages it was running when it stopped or died.

`resume_rollouts` runs as a supervised task once the appliance has started (with several heads,
on the head that leads: ha/singletons.py) and for as long as it runs: for every rollout left
"running" by an appliance (nodes/progress.py `unfinished`), oldest first, it opens the scheduler
and power drivers as the API does for a new rollout and calls Rollout.resume, which waits for
nothing: while the lock is held (its runner is alive and renews it, or the dead runner's lock
has not expired yet, or another rollout runs) it is refused, and the task looks again after
`retry` seconds. So a rollout whose runner dies at any time is taken up, not only one left
running when this head started or took the lead (a rollout runs on whichever head's API
started it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from provisioner.config import Settings
from provisioner.handoff import open_handoff
from provisioner.inventory.locks import LockHeld
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import Node, setting_values
from provisioner.nodes.progress import FINISHED, load_status, unfinished
from provisioner.nodes.rollout import Rollout, States
from provisioner.power.base import PowerDriver
from provisioner.power.registry import open_power

log = logging.getLogger(__name__)
RETRY = 5.0  # seconds between tries for a rollout whose lock is held


def power_opener(settings: Settings,
                 inventory: Inventory) -> Callable[[Node], Awaitable[PowerDriver]]:
    """A node's power driver from its effective settings."""

    async def power_for(node: Node) -> PowerDriver:
        effective = await inventory.effective(node, settings.defaults)
        return open_power(setting_values(effective), node=node.name)

    return power_for


async def resume_rollouts(settings: Settings, inventory: Inventory, states: States, *,
                          clock: Callable[[], float] = time.time, retry: float = RETRY,
                          poll: float = 1.0) -> None:
    """Forever: take up every rollout left running whose runner is gone, oldest first, then
    look again after `retry` seconds (see the docstring)."""
    told: set[str] = set()  # rollouts whose "lock held" was logged at info once already
    while True:
        for left in await unfinished(inventory):
            if (await load_status(inventory, left.id)).state in FINISHED:
                continue
            handoff = open_handoff(settings)
            rollout = Rollout(inventory, states, handoff, power_opener(settings, inventory),
                              clock=clock, poll=poll, resumable=True)
            try:
                await rollout.resume(left.id)
            except LockHeld as exc:
                level = logging.DEBUG if left.id in told else logging.INFO
                told.add(left.id)
                log.log(level, "reimage %s: not resumed (yet): %s", left.id, exc)
            finally:
                await handoff.close()
        await asyncio.sleep(retry)
