"""QEMU through QMP on a unix socket (the lab's nodes).

QMP has no "power off but keep the machine": `quit` ends the process and nothing could start
it again. So this driver models power as "are the vCPUs running":

    status    query-status: running (and crashed/migrating states) -> on;
              paused, prelaunch (-S), shutdown (guest off under -no-shutdown) -> off
    on        cont (after a system_reset when the guest had shut down)
    off       stop + system_reset: frozen at once, and `on` boots afresh from firmware
    cycle     system_reset (+ cont when not running), confirmed by QEMU's RESET event
    soft_off  system_powerdown: an ACPI power button press; the guest OS must handle it

The lab runs nodes with -no-reboot, which turns every reset request, ours included, into a
shutdown (QEMU exits). Before a reset the driver therefore switches the reboot action to
"reset" with `set-action`, and leaves it so: firmware resets the machine again by itself after
a host reset (SeaBIOS: "Attempting a hard reboot"), so putting -no-reboot back at once would end
QEMU in the middle of the boot. A reimaged lab node thus reboots in place on a guest reset.

One connection per operation: a QMP chardev serves one client at a time, so holding a
connection would lock out `provisioner node power` and the lab's own tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Final

from provisioner.errors import PowerError
from provisioner.power.base import DEFAULT_TIMEOUT, PowerState, PowerTarget

OFF_STATES: Final = frozenset({"paused", "prelaunch", "shutdown"})


class QmpConnection:
    """A QMP session: greeting, qmp_capabilities, then commands; events are collected."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path, self.timeout = path, timeout
        self.events: list[dict[str, Any]] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> QmpConnection:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path), self.timeout)
            greeting = await self._read()
            if "QMP" not in greeting:
                raise PowerError(f"{self.path} is not a QMP socket (no greeting)")
            await self.execute("qmp_capabilities")
        except (OSError, TimeoutError) as exc:
            await self.close()
            raise PowerError(f"cannot talk QMP on {self.path}: {exc.__class__.__name__}: "
                             f"{exc}; is the QEMU process running with -qmp unix:PATH,server?"
                             ) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, RuntimeError):
                await self._writer.wait_closed()
            self._writer = None

    async def _read(self) -> dict[str, Any]:
        assert self._reader is not None
        try:
            line = await asyncio.wait_for(self._reader.readline(), self.timeout)
        except OSError:
            line = b""
        if not line:
            raise PowerError(f"QEMU closed the QMP socket {self.path}; the process has exited")
        message: dict[str, Any] = json.loads(line)
        return message

    async def execute(self, command: str, **arguments: Any) -> Any:
        """Send one command and return its "return" value; events met on the way are kept."""
        assert self._writer is not None
        body: dict[str, Any] = {"execute": command}
        if arguments:
            body["arguments"] = arguments
        try:
            self._writer.write(json.dumps(body).encode() + b"\n")
            await self._writer.drain()
        except OSError as exc:
            raise PowerError(f"QMP socket {self.path} broke ({exc}); is QEMU still running?"
                             ) from None
        for _ in range(1000):  # bounded: events may arrive before the answer
            message = await self._read()
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                error = message["error"]
                raise PowerError(f"QEMU refused {command}: {error.get('desc', error)}")
            elif "return" in message:
                return message["return"]
        raise PowerError(f"no answer to {command} from {self.path}")

    async def wait_event(self, names: set[str], timeout: float) -> dict[str, Any] | None:
        """The first event named in `names` (already seen or arriving within `timeout`)."""
        for event in self.events:
            if event["event"] in names:
                return event
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                message = await asyncio.wait_for(self._read(), deadline - loop.time())
            except TimeoutError:
                return None
            if message.get("event") in names:
                return message
        return None


class QemuDriver:
    kind = "qemu"

    def __init__(self, socket_path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path, self.timeout = socket_path, timeout

    @classmethod
    def from_target(cls, target: PowerTarget) -> QemuDriver:
        return cls(target.required_address(cls.kind), timeout=target.timeout)

    def __repr__(self) -> str:
        return f"QemuDriver({self.path!r})"

    def _connect(self) -> QmpConnection:
        return QmpConnection(self.path, self.timeout)

    async def run_status(self) -> str:
        """QEMU's own run state ("running", "paused", "shutdown", ...)."""
        async with self._connect() as qmp:
            answer = await qmp.execute("query-status")
        return str(answer.get("status", "unknown"))

    async def status(self) -> PowerState:
        run_state = await self.run_status()
        return PowerState.OFF if run_state in OFF_STATES else PowerState.ON

    async def on(self) -> None:
        async with self._connect() as qmp:
            answer = await qmp.execute("query-status")
            if answer.get("status") == "shutdown":
                await self._reset(qmp)
            if answer.get("status") != "running":
                await qmp.execute("cont")

    async def off(self) -> None:
        async with self._connect() as qmp:
            await qmp.execute("stop")
            await self._reset(qmp)

    async def cycle(self) -> None:
        async with self._connect() as qmp:
            answer = await qmp.execute("query-status")
            await self._reset(qmp)
            if answer.get("status") != "running":
                await qmp.execute("cont")

    async def soft_off(self) -> None:
        async with self._connect() as qmp:
            await qmp.execute("system_powerdown")

    async def _reset(self, qmp: QmpConnection) -> None:
        with contextlib.suppress(PowerError):  # set-action needs QEMU 6.0; try the reset anyway
            await qmp.execute("set-action", reboot="reset")
        await qmp.execute("system_reset")
        event = await qmp.wait_event({"RESET", "SHUTDOWN"}, self.timeout)
        if event is None or event["event"] != "RESET":
            seen = event["event"] if event else "nothing"
            raise PowerError(f"QEMU on {self.path} did not reset (saw {seen}); check its "
                             "-no-reboot/-action options and its log")
