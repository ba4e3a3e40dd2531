"""The manual driver: nothing to call, so it tells the operator what to do.

Each action sends one instruction to `notify` (the CLI prints it, the service logs it) and
returns: a reimage with manual power then waits for the node's callback as usual, which
arrives once somebody has pressed the button.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from provisioner.power.base import PowerState, PowerTarget

log = logging.getLogger(__name__)


class ManualDriver:
    kind = "manual"

    def __init__(self, node: str, address: str = "",
                 notify: Callable[[str], None] | None = None) -> None:
        self.node, self.address = node, address
        self._notify = notify or (lambda text: log.warning("%s", text))
        self.instructions: list[str] = []

    @classmethod
    def from_target(cls, target: PowerTarget) -> ManualDriver:
        """No address needed: power_address, when set, is shown as where the node is."""
        return cls(target.node, target.address, notify=target.notify)

    def __repr__(self) -> str:
        return f"ManualDriver({self.node!r})"

    def _tell(self, what: str) -> None:
        where = f" (at {self.address})" if self.address else ""
        text = f"manual power: {what} node {self.node}{where} now"
        self.instructions.append(text)
        self._notify(text)

    async def status(self) -> PowerState:
        return PowerState.UNKNOWN

    async def on(self) -> None:
        self._tell("power on")

    async def off(self) -> None:
        self._tell("power off (hold the power button)")

    async def cycle(self) -> None:
        self._tell("power-cycle (reset)")

    async def soft_off(self) -> None:
        self._tell("shut down the operating system of")
