"""IPMI 2.0 (RMCP+, "lanplus") through ipmitool.

The password goes to ipmitool in its environment (IPMI_PASSWORD, read with -E), never on the
command line, where every local user could read it in /proc. `power_address` is `host` or
`host:port` (default port 623). Output and errors are scrubbed of the password before they are
shown, in case a BMC or ipmitool echoes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from typing import Final

from provisioner.errors import PowerError
from provisioner.power.base import DEFAULT_TIMEOUT, PowerState, PowerTarget, Secret, scrub

log = logging.getLogger(__name__)
IPMITOOL: Final = "ipmitool"
#: RMCP+ cipher suite 3 (HMAC-SHA1, AES-CBC-128) is the one every IPMI 2.0 BMC supports. Giving
#: it skips ipmitool's suite discovery, which costs a 5 s timeout on BMCs that do not answer it.
CIPHER_SUITE: Final = 3


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or host.endswith(":") or "]" in port:  # bare host or IPv6 without a port
        return address.strip("[]"), 623
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise PowerError(f"power_address {address!r}: the port must be a number (host:623)")
    return host.strip("[]"), int(port)


class IpmiDriver:
    kind = "ipmi"

    def __init__(self, address: str, user: str, password: Secret, *,
                 timeout: float = DEFAULT_TIMEOUT, tool: str = IPMITOOL,
                 cipher_suite: int = CIPHER_SUITE) -> None:
        self.host, self.port = split_host_port(address)
        self.user, self._password, self.timeout, self.tool = user, password, timeout, tool
        self.cipher_suite = cipher_suite

    @classmethod
    def from_target(cls, target: PowerTarget) -> IpmiDriver:
        return cls(target.required_address(cls.kind), target.user, target.password,
                   timeout=target.timeout)

    def __repr__(self) -> str:
        return f"IpmiDriver({self.host!r}, port={self.port}, user={self.user!r})"

    def command(self, *args: str) -> list[str]:
        """The argument vector: no secret in it (the password travels in the environment)."""
        argv = [self.tool, "-I", "lanplus", "-H", self.host, "-p", str(self.port),
                "-C", str(self.cipher_suite), "-R", "2", "-N", "2"]
        if self.user:
            argv += ["-U", self.user]
        return [*argv, "-E", *args]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "IPMI_PASSWORD": self._password.reveal()}

    async def run(self, *args: str) -> str:
        if shutil.which(self.tool) is None:
            raise PowerError("ipmitool is not installed; install the Debian package ipmitool")
        argv = self.command(*args)
        proc = await asyncio.create_subprocess_exec(
            *argv, env=self.environment(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise PowerError(f"no answer from the BMC {self.host}:{self.port} within "
                             f"{self.timeout:.0f} s; check power_address and the network"
                             ) from None
        text = scrub(out.decode(errors="replace"), self._password)
        if proc.returncode != 0:
            detail = scrub(err.decode(errors="replace"), self._password).strip()
            hint = ("check power_user and power_password" if "session" in detail.lower()
                    or "password" in detail.lower() or "auth" in detail.lower()
                    else "check power_address and that the BMC answers IPMI over LAN")
            raise PowerError(f"ipmitool {' '.join(args)} on {self.host}:{self.port} failed: "
                             f"{detail.splitlines()[-1] if detail else 'no output'}; {hint}")
        level = logging.DEBUG if args[-1] == "status" else logging.INFO
        log.log(level, "ipmi %s:%s: %s", self.host, self.port, " ".join(args))
        return text

    async def status(self) -> PowerState:
        text = (await self.run("chassis", "power", "status")).strip().lower()
        if text.endswith(" on"):
            return PowerState.ON
        if text.endswith(" off"):
            return PowerState.OFF
        return PowerState.UNKNOWN

    async def on(self) -> None:
        await self.run("chassis", "power", "on")

    async def off(self) -> None:
        await self.run("chassis", "power", "off")

    async def cycle(self) -> None:
        # IPMI refuses "power cycle" on a chassis that is off (completion code 0xd5)
        if await self.status() is PowerState.OFF:
            await self.on()
        else:
            await self.run("chassis", "power", "cycle")

    async def soft_off(self) -> None:
        await self.run("chassis", "power", "soft")

    async def boot_pxe_once(self) -> None:
        await self.run("chassis", "bootdev", "pxe")  # without options=persistent: next boot only
