"""One real appliance for the malformed-input runs, in a network namespace the bed creates.

Every plane runs as `provisioner serve` runs it: `Appliance` (sqlite store, DHCP in full mode,
TFTP, the boot plane) and the API under uvicorn with httptools on the same event loop, in a
thread inside the namespace. The namespace holds only its loopback, so whatever the servers
answer to a made-up packet (a DHCP reply to a forged relay address, a broadcast) stays in it.
The test clients run in a second thread inside the same namespace (`inside()`).

Addresses, all on the namespace's lo (127/8 is routed there): the servers on 127.0.0.1 with
the standard ports, the relay agent of the good DISCOVER on 127.0.0.2 (its OFFER comes back to
127.0.0.2:67, RFC 2131 section 4.1), every malformed input from 127.0.0.3, and the node (its
static address, so that the boot plane and the callback accept it) on 127.0.0.4.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import lzma
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

import httpx
import hypothesis
import pytest
import uvicorn
from hypothesis import strategies as st

from provisioner.api.app import create_app
from provisioner.api.routes.node import CallbackFastPath
from provisioner.config import DhcpSettings, Settings, SubnetSettings, load_settings
from provisioner.images.format.catalog import describe_files
from provisioner.nodes.model import MacAddress, Node, NodeState
from provisioner.security.tokens import Role
from provisioner.service import Appliance

T = TypeVar("T")
SERVER, RELAY, FUZZER, NODE_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"
DHCP_PORT, TFTP_PORT, BOOT_PORT, API_PORT = 67, 69, 8069, 8080
NODE_MAC = MacAddress("52:54:00:f2:00:01")
TFTP_FILE = "fuzz.bin"
IMAGE = "fuzz"
START_TIMEOUT = 30.0


class ErrorLog(logging.Handler):
    """Keeps every ERROR record of the provisioner loggers: a supervised task that failed
    ("task ... failed"), a bug while handling a packet, an unhandled API exception."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


def _settings(data: Path) -> Settings:
    settings = load_settings(env={
        "PROVISIONER_DATA_DIR": str(data), "PROVISIONER_STORE_BACKEND": "sqlite",
        "PROVISIONER_TFTP_LISTEN": SERVER, "PROVISIONER_TFTP_PORT": str(TFTP_PORT),
        "PROVISIONER_TFTP_IPXE_DIR": "", "PROVISIONER_BOOT_LISTEN": SERVER,
        "PROVISIONER_BOOT_PORT": str(BOOT_PORT), "PROVISIONER_API_LISTEN": SERVER,
        "PROVISIONER_API_PORT": str(API_PORT), "PROVISIONER_HANDOFF_KIND": "none"})
    # The relayed subnet holds the node's reservation (NODE_IP): a reservation outside the
    # subnet a request comes from is not offered (dhcp/answers.py).
    subnet = SubnetSettings(network="127.0.0.0/24", pool_start="127.0.0.100",
                            pool_end="127.0.0.250", relay=RELAY)
    dhcp = DhcpSettings(mode="full", listen=SERVER, port=DHCP_PORT, server_ip=SERVER,
                        subnets=(subnet,), detect_other_servers=False)
    return dataclasses.replace(settings, dhcp=dhcp)


def _publish(appliance: Appliance, payload: bytes) -> None:
    staging = appliance.catalog.new_staging(IMAGE)
    (staging / "vmlinuz").write_bytes(b"kernel " * 100)
    (staging / "image.cpio.xz").write_bytes(payload)
    (staging / "manifest.json").write_text(json.dumps({"files": describe_files(staging)}))
    appliance.catalog.publish(staging, IMAGE, activate=True)


class FuzzBed:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.netns = f"pv-fz-{secrets.token_hex(3)}"
        self.settings = _settings(work / "data")
        self.image = lzma.compress(os.urandom(200_000), check=lzma.CHECK_CRC32)
        self.tftp_payload = os.urandom(70_000)
        self.errors = ErrorLog()
        self.admin = ""
        self.appliance: Appliance | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._server_thread: threading.Thread | None = None
        self._clients: Any = None

    # -- set-up and tear-down ----------------------------------------------------------------

    def start(self) -> FuzzBed:
        from provisioner.lab.netns import Namespace

        subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=30)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True,
                       timeout=30)
        logging.getLogger("provisioner").addHandler(self.errors)
        server = Namespace(self.netns)
        self._clients = Namespace(self.netns)
        self._server_thread = threading.Thread(
            target=lambda: self._run(server), name="fuzz-appliance", daemon=True)
        self._server_thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._failed is not None:
            self.stop()
            raise RuntimeError(f"the appliance did not start: {self._failed!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._server_thread is not None:
            self._server_thread.join(30)
        if self._clients is not None:
            self._clients.close()
        logging.getLogger("provisioner").removeHandler(self.errors)
        subprocess.run(["ip", "netns", "delete", self.netns], check=False, timeout=30)

    def _run(self, server: Any) -> None:
        try:
            server.call(lambda: asyncio.run(self._main()), timeout=None)
        except BaseException as exc:  # reported by start()
            self._failed = exc
            self._ready.set()
        finally:
            server.close()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            appliance = Appliance(self.settings)
            await appliance.start(stack)
            self.appliance = appliance
            await self._stage(appliance)
            context = appliance.api_context()
            api = uvicorn.Server(uvicorn.Config(
                CallbackFastPath(create_app(context), context), host=SERVER, port=API_PORT,
                http="httptools", loop="asyncio", log_level="warning", access_log=False))
            serving = asyncio.create_task(api.serve())
            while not (api.started or serving.done()):
                await asyncio.sleep(0.01)
            self._ready.set()
            await self._stop.wait()
            api.should_exit = True
            await serving

    async def _stage(self, appliance: Appliance) -> None:
        _publish(appliance, self.image)
        (self.settings.tftp_root / TFTP_FILE).write_bytes(self.tftp_payload)
        revision = await appliance.inventory.add_node(
            Node(NODE_MAC, "fuzz-node", ip=IPv4Address(NODE_IP), image=IMAGE))
        await appliance.inventory.settle(revision)
        _, self.admin = await appliance.api_tokens.create(Role.ADMIN, "fuzz", time.time())

    # -- what the tests use ------------------------------------------------------------------

    def inside(self, fn: Callable[[], T], timeout: float = 1800) -> T:
        """Run `fn` in the client thread inside the namespace."""
        result: T = self._clients.call(fn, timeout)
        return result

    def on_loop(self, factory: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
        """Run a coroutine on the appliance's loop (reads of its counters and state)."""
        assert self._loop is not None

        async def call() -> T:
            return await factory()

        future: Future[T] = asyncio.run_coroutine_threadsafe(call(), self._loop)
        return future.result(timeout)

    def counters(self, plane: str) -> dict[str, int]:
        async def read() -> dict[str, int]:
            assert self.appliance is not None
            return self.appliance.counters()[plane]
        return self.on_loop(read)

    def restarts(self) -> dict[str, int]:
        """Supervised tasks that restarted, or wait to: should stay empty. A task that finished
        its work (the rollout resumer, with nothing to resume) is not one of them."""
        async def read() -> dict[str, int]:
            assert self.appliance is not None
            return {s.name: s.restarts for s in self.appliance.supervisor.states()
                    if s.restarts or s.status == "restarting"}
        return self.on_loop(read)

    def provisioning_token(self) -> str:
        """Put the node back to provisioning with a fresh one-boot token (a new boot)."""
        async def stage() -> str:
            assert self.appliance is not None
            inventory = self.appliance.inventory
            written = await inventory.update_node_versioned(
                NODE_MAC.value, lambda n: n.with_changes(state=NodeState.PROVISIONING))
            await inventory.settle(written.revision)
            return await self.appliance.boot_tokens.issue(NODE_MAC, 3600, time.time())
        return self.on_loop(stage)

    def healthy(self) -> None:
        """/healthz answers 200 over the API's socket, no task restarted, no ERROR logged."""
        def ask() -> httpx.Response:
            return httpx.get(f"http://{SERVER}:{API_PORT}/healthz", timeout=10)
        answer = self.inside(ask)
        assert answer.status_code == 200, answer.text
        restarts = self.restarts()
        assert restarts == {}, restarts
        assert self.errors.records == [], self.errors.records


@contextlib.contextmanager
def running_bed(work: Path) -> Iterator[FuzzBed]:
    bed = FuzzBed(work).start()
    try:
        yield bed
    finally:
        bed.stop()


#: the short run is every CI run's; the full one (10,000 inputs a plane) is `slow` and runs
#: with PROVISIONER_FUZZ_FULL=1 (`PROVISIONER_FUZZ_FULL=1 pytest -m slow tests/fuzz`)
SHORT, FULL = 1_000, 10_000
PER_EXAMPLE = 10
SIZES = [
    pytest.param(SHORT, id="short"),
    pytest.param(FULL, id="full", marks=[
        pytest.mark.slow,
        pytest.mark.skipif(not os.environ.get("PROVISIONER_FUZZ_FULL"),
                           reason="the full run: set PROVISIONER_FUZZ_FULL=1")]),
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], changes: int, tail: int) -> bytes:
    """One of `seeds` (valid datagrams) with up to `changes` bytes replaced, then cut short
    or extended by up to `tail` random bytes."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for index, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1),
                                                st.integers(0, 255)), max_size=changes)):
        data[index] = value
    cut = draw(st.just(len(data)) | st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=tail))


def run_examples(bed: FuzzBed, strategy: st.SearchStrategy[T], check: Callable[[T], None],
                 count: int) -> None:
    """`check` on `count` inputs drawn from `strategy`, in the namespace, PER_EXAMPLE of them
    to a Hypothesis example (its own cost per example is most of a short run's time). The seed
    is fixed (derandomize): a failure comes back on the next run, shrunk to its smallest form."""
    @hypothesis.settings(max_examples=count // PER_EXAMPLE, derandomize=True, deadline=None,
                         database=None, suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.lists(strategy, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def examples(inputs: list[T]) -> None:
        for one in inputs:
            check(one)

    bed.inside(examples)
