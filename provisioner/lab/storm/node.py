"""One simulated node's boot, stage by stage, as its firmware, iPXE and /init would make it:

  dhcp       the firmware's DISCOVER/OFFER/REQUEST/ACK (PXE options; BIOS nodes run iPXE from
             their NIC's ROM, as QEMU's do, so they ask as iPXE at once); the leased address
             is then added to the client namespace's interface
  tftp       UEFI only: the iPXE binary the ACK named, from the next-server
  dhcp-ipxe  UEFI only: iPXE's own DHCP exchange, which gets the boot script's URL
  script     the boot script (templates/ipxe/boot.ipxe.j2), with iPXE's User-Agent
  kernel, image, overlay
             the files the script names; the overlay is unpacked as the kernel would (an xz
             cpio, then the plain cpio with the token) and read as /init reads it
             (templates/image/init.sh.j2): node.env, then etc/provisioner/token
  callback   POST /node/v1/booted with the token, as /init's wget does
  poll       the node agent's first poll of the scheduler (templates/overlay/etc/provisioner/
             agent.j2) with the credential the callback answered; ready when it is answered

Retries follow the real clients: iPXE's script retries a failed fetch, /init retries the
callback with backoff (1, 2, 4 .. s; a 4xx other than 408/429 is final), the agent backs off
its polls from 1 s. The waits here are shorter than iPXE's 5 s, and every loop is bounded.
"""

from __future__ import annotations

import asyncio
import json
import lzma
import re
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from provisioner.images.format import cpio
from provisioner.lab.storm.rawdhcp import DhcpFailed, RawDhcp
from provisioner.lab.storm.report import NodeRecord
from provisioner.lab.storm.transfers import FetchFailed, HttpReply, http, tftp_read

IPXE_AGENT: Final = "iPXE/1.21.1+ (g988d2)"  # what Debian 12's iPXE sends
WGET_AGENT: Final = "Wget"  # busybox wget
XZ_MAGIC: Final = b"\xfd7zXZ\x00"
FETCH_ATTEMPTS: Final = 5
FETCH_DELAY: Final = 2.0
POLL_ATTEMPTS: Final = 12
MAX_BACKOFF: Final = 8.0
T = TypeVar("T")
_SET: Final = re.compile(r"^set (prov-kernel|prov-image|prov-overlay) (\S+)$", re.M)


class BootFailed(Exception):
    pass


@dataclass(frozen=True)
class BootPlan:
    """What every node of a run does: skip the bulk transfers, check ETags."""

    control_only: bool = False
    #: file name (vmlinuz, image.cpio.xz) -> the ETag the server must send; empty: unchecked
    etags: dict[str, str] = field(default_factory=dict)


AddAddress = Callable[[str, int], Awaitable[None]]


class SimNode:
    def __init__(self, record: NodeRecord, dhcp: RawDhcp, add_address: AddAddress,
                 plan: BootPlan) -> None:
        self.record = record
        self.dhcp = dhcp
        self.add_address = add_address
        self.plan = plan
        self.stage = "waiting"
        self.ip = ""

    async def boot(self) -> NodeRecord:
        try:
            await self._boot()
        except (BootFailed, DhcpFailed, FetchFailed, OSError, TimeoutError,
                ValueError) as exc:
            self.record.error = f"{self.stage}: {type(exc).__name__}: {exc}"[:200]
        self.stage = "failed" if self.record.error else "ready"
        return self.record

    async def _boot(self) -> None:
        r = self.record
        bios = r.arch == "bios"
        lease = await self._timed("dhcp", self._lease(ipxe=bios))
        script_url = lease[1]
        if not bios:
            if not self.plan.control_only:
                await self._timed("tftp", self._tftp(lease[2], lease[1]))
            script_url = (await self._timed("dhcp-ipxe", self._lease(ipxe=True)))[1]
        urls = await self._timed("script", self._script(script_url))
        if not self.plan.control_only:
            await self._timed("kernel", self._file("kernel", urls["prov-kernel"]))
            await self._timed("image", self._file("image", urls["prov-image"]))
        env, token = await self._timed("overlay", self._overlay(urls["prov-overlay"]))
        credential = await self._timed("callback", self._callback(env, token))
        await self._timed("poll", self._poll(env, credential))

    async def _timed(self, stage: str, work: Awaitable[T]) -> T:
        self.stage = stage
        began = time.monotonic()
        result = await work
        self.record.spans[stage] = (began, time.monotonic())
        return result

    async def _lease(self, *, ipxe: bool) -> tuple[str, str, str]:
        """(address, boot file name, next server)."""
        retried = [0]
        try:
            lease = await self.dhcp.exchange(self.record.mac, self.record.arch, ipxe=ipxe,
                                             retried=retried)
        finally:
            self.record.retries[self.stage] = retried[0]
        if str(lease.ip) != self.ip:
            self.ip = str(lease.ip)
            await self.add_address(self.ip, lease.prefix)
        if not lease.filename:
            raise BootFailed("the DHCP ACK named no boot file")
        return self.ip, lease.filename, str(lease.next_server)

    async def _tftp(self, server: str, filename: str) -> None:
        """The read; a failed one (the server's ERROR, such as "busy, retry later", or a
        session that went silent) is started again after FETCH_DELAY, as a firmware's boot
        order comes back to its PXE entry."""
        retried = [0]
        try:
            for attempt in range(FETCH_ATTEMPTS):
                if attempt:
                    retried[0] += 1
                    await asyncio.sleep(FETCH_DELAY)
                try:
                    self.record.bytes_read += await tftp_read(self.ip, server, filename,
                                                              retried)
                    return
                except FetchFailed:
                    if attempt == FETCH_ATTEMPTS - 1:
                        raise
        finally:
            self.record.retries["tftp"] = retried[0]

    async def _fetch(self, method: str, url: str, *, agent: str, keep: bool = True,
                     body: bytes = b"", headers: dict[str, str] | None = None,
                     accept: Callable[[HttpReply], bool] = lambda a: a.status == 200
                     ) -> HttpReply:
        """`url` until `accept` takes the answer, FETCH_ATTEMPTS times at most."""
        sent = {"User-Agent": agent, **(headers or {})}
        problem = ""
        for attempt in range(FETCH_ATTEMPTS):
            if attempt:
                self.record.retry(self.stage)
                await asyncio.sleep(FETCH_DELAY)
            try:
                answer = await http(method, url, source=self.ip, headers=sent, body=body,
                                    keep=keep)
            except (OSError, TimeoutError, FetchFailed, asyncio.IncompleteReadError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            self.record.bytes_read += answer.length
            if accept(answer):
                return answer
            problem = f"HTTP {answer.status}"
        raise BootFailed(f"{url}: {problem} after {FETCH_ATTEMPTS} tries")

    async def _script(self, url: str) -> dict[str, str]:
        if not url.startswith("http://"):
            raise BootFailed(f"iPXE was told to load {url!r}, not a boot script URL")
        answer = await self._fetch("GET", url, agent=IPXE_AGENT,
                                   accept=lambda a: a.status == 200 and b"initrd" in a.body)
        text = answer.body.decode(errors="replace").replace("${mac}", self.record.mac)
        found = dict(_SET.findall(text))  # ${mac} expanded, as iPXE expands its settings
        if len(found) != 3:
            raise BootFailed("the boot script names no kernel, image or overlay")
        return found

    async def _file(self, kind: str, url: str) -> None:
        name = url.rsplit("/", 1)[-1]
        want = self.plan.etags.get(name, "")

        def good(a: HttpReply) -> bool:
            return a.status == 200 and (not want or a.headers.get("etag") == want)

        answer = await self._fetch("GET", url, agent=IPXE_AGENT, keep=False, accept=good)
        if answer.length == 0:
            raise BootFailed(f"{kind}: empty")

    async def _overlay(self, url: str) -> tuple[dict[str, str], str]:
        answer = await self._fetch("GET", url, agent=IPXE_AGENT)
        files = unpack_overlay(answer.body)
        env = parse_env(files.get("etc/provisioner/node.env", b"").decode())
        token = files.get("etc/provisioner/token", b"").decode().strip()
        if not token or "PROVISIONER_CALLBACK_URL" not in env:
            raise BootFailed("the overlay has no token or no node.env")
        return env, token

    async def _callback(self, env: dict[str, str], token: str) -> str:
        body = json.dumps({"mac": self.record.mac, "token": token,
                           "image": env.get("PROVISIONER_IMAGE", ""),
                           "version": env.get("PROVISIONER_IMAGE_VERSION", ""),
                           "facts": {"cpus": 2, "memory_mib": 1024, "disks": [],
                                     "nics": [{"name": "eth0", "mac": self.record.mac}]}})
        answer = await self._backoff(
            "POST", env["PROVISIONER_CALLBACK_URL"], body.encode(),
            {"Content-Type": "application/json"},
            final=lambda a: 400 <= a.status < 500 and a.status not in (408, 429))
        if answer.status != 200:
            raise BootFailed(f"callback refused: HTTP {answer.status} {answer.body[:120]!r}")
        agent_token = json.loads(answer.body).get("agent_token", "")
        return str(agent_token)

    async def _poll(self, env: dict[str, str], credential: str) -> None:
        url = (f"{env['PROVISIONER_SCHEDULER_URL'].rstrip('/')}/sched/v1/nodes/"
               f"{env['PROVISIONER_NODE']}/poll?format=text")
        answer = await self._backoff("POST", url, b"",
                                     {"Authorization": f"Bearer {credential}"},
                                     final=lambda a: False)
        if answer.status not in (200, 204):
            raise BootFailed(f"poll: HTTP {answer.status}")

    async def _backoff(self, method: str, url: str, body: bytes, headers: dict[str, str],
                       final: Callable[[HttpReply], bool]) -> HttpReply:
        """/init's and the agent's loop: 1 s, doubling (capped), POLL_ATTEMPTS at most."""
        delay = 1.0
        problem = ""
        for attempt in range(POLL_ATTEMPTS):
            if attempt:
                self.record.retry(self.stage)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
            try:
                answer = await http(method, url, source=self.ip, body=body,
                                    headers={"User-Agent": WGET_AGENT, **headers})
            except (OSError, TimeoutError, FetchFailed, asyncio.IncompleteReadError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if answer.status in (200, 204) or final(answer):
                return answer
            problem = f"HTTP {answer.status}"
        raise BootFailed(f"{url}: {problem} after {POLL_ATTEMPTS} tries")


def unpack_overlay(data: bytes) -> dict[str, bytes]:
    """The files of an overlay as the kernel unpacks it: archives back to back, each either an
    xz stream or a plain newc cpio; later files win."""
    files: dict[str, bytes] = {}
    rest = data
    while rest.strip(b"\0"):
        rest = rest.lstrip(b"\0")
        if rest.startswith(XZ_MAGIC):
            unxz = lzma.LZMADecompressor(lzma.FORMAT_XZ)
            archive = unxz.decompress(rest)
            rest = unxz.unused_data
        else:
            archive, rest = rest, b""
        files.update({e.path: e.data for e in cpio.unpack(archive) if not e.is_dir})
    return files


def parse_env(text: str) -> dict[str, str]:
    """`NAME='value'` lines of node.env (the template shell-quotes every value)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.isidentifier() and name.isupper():
            words = shlex.split(value, comments=True) if value else []
            env[name] = words[0] if words else ""
    return env
