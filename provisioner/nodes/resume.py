"""The appliance takes up the rolling reimages it was running when it stopped or died.

`resume_rollouts` runs as a supervised task once the appliance has started: for every rollout
left "running" by an appliance (nodes/progress.py `unfinished`), oldest first, it opens the
scheduler and power drivers as the API does for a new rollout and calls Rollout.resume, which
waits for nothing: while the lock is held (the dead runner's lock has not expired yet, another
appliance is resuming it, another rollout runs) it is refused, and this task tries again after
`retry` seconds, until the rollout is over.
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
    """Resume every rollout the appliance left running, one at a time (see the docstring)."""
    for left in await unfinished(inventory):
        while (await load_status(inventory, left.id)).state not in FINISHED:
            handoff = open_handoff(settings)
            rollout = Rollout(inventory, states, handoff, power_opener(settings, inventory),
                              clock=clock, poll=poll, resumable=True)
            try:
                await rollout.resume(left.id)
            except LockHeld as exc:
                log.info("reimage %s: not resumed yet: %s", left.id, exc)
                await asyncio.sleep(retry)
            finally:
                await handoff.close()
