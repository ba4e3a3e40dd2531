"""etcd-only behaviour against a real server: outages, restarts, namespaces, lease keep-alive,
endpoints. What every backend does is in test_contract.py, which runs on etcd too.

Tests that stop or restart etcd get their own server (`private_etcd`), so the session server the
contract suite shares is never disturbed.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from provisioner.errors import NotFound, StoreUnavailable, ValidationError
from provisioner.store.base import EventType, KeyValueStore, WatchEvent
from provisioner.store.etcd import EtcdStore
from provisioner.store.etcd.connection import parse_endpoint
from tests.support.etcd_server import EtcdServer

pytestmark = pytest.mark.etcd


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def private_store(private_etcd: EtcdServer) -> AsyncIterator[EtcdStore]:
    store = EtcdStore([private_etcd.endpoint], namespace="/private", timeout=1.0)
    try:
        yield store
    finally:
        await store.close()


def _namespace() -> str:
    return f"/test-{uuid.uuid4().hex[:8]}"


async def test_store_down_gives_store_unavailable_within_the_timeout(
    private_etcd: EtcdServer, private_store: EtcdStore
) -> None:
    await private_store.put("/a", b"1")
    private_etcd.stop()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: private_store.get("/a"),
        lambda: private_store.put("/a", b"2"),
        lambda: private_store.put("/a", b"3", expect=1),
        private_store.status,
    ]
    for call in calls:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as raised:
            await call()
        assert time.monotonic() - began < 3.0
        assert private_etcd.endpoint in str(raised.value)
        assert "check that etcd is running" in str(raised.value)


async def test_store_comes_back_after_a_restart(
    private_etcd: EtcdServer, private_store: EtcdStore
) -> None:
    await private_store.put("/a", b"1")
    private_etcd.restart()
    kv = await private_store.get("/a")  # the channel reconnects within the call's timeout
    assert kv is not None and kv.value == b"1"


async def test_watch_resumes_across_an_etcd_restart(
    private_etcd: EtcdServer, private_store: EtcdStore
) -> None:
    seen: list[WatchEvent] = []
    both = asyncio.Event()

    async def follow() -> None:
        async for event in private_store.watch("/w/"):
            seen.append(event)
            if len(seen) >= 2:
                both.set()

    task = asyncio.create_task(follow())
    try:
        await asyncio.sleep(0.2)  # let the watch be created before the first put
        first = await private_store.put("/w/a", b"A")
        async with asyncio.timeout(5):
            while not seen:
                await asyncio.sleep(0.02)
        # kill -9, not a clean stop: the stream just breaks, as in a crash.
        await asyncio.to_thread(private_etcd.kill)
        await asyncio.to_thread(private_etcd.restart)
        second = await private_store.put("/w/b", b"B")
        async with asyncio.timeout(10):
            await both.wait()
        await asyncio.sleep(0.3)  # a duplicate, if the resume were wrong, would arrive now
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [(e.type, e.key, e.value, e.revision) for e in seen] == [
        (EventType.PUT, "/w/a", b"A", first),
        (EventType.PUT, "/w/b", b"B", second),
    ]


async def test_watch_resumes_from_the_revision_it_reached(
    private_etcd: EtcdServer, private_store: EtcdStore
) -> None:
    """Writes made by another client while our watch is reconnecting are not lost."""
    other = EtcdStore([private_etcd.endpoint], namespace="/private", timeout=5.0)
    seen: list[str] = []

    async def follow() -> None:
        async for event in private_store.watch("/w/"):
            seen.append(event.key)

    task = asyncio.create_task(follow())
    try:
        await asyncio.sleep(0.2)
        await other.put("/w/1", b"")
        await asyncio.to_thread(private_etcd.restart)
        for i in range(2, 6):  # likely while the watch is still backing off
            await other.put(f"/w/{i}", b"")
        async with asyncio.timeout(10):
            while len(seen) < 5:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await other.close()
    assert seen == [f"/w/{i}" for i in range(1, 6)]


async def test_namespaces_are_isolated(etcd_server: EtcdServer) -> None:
    first, second = _namespace(), _namespace()
    one = EtcdStore([etcd_server.endpoint], namespace=first)
    two = EtcdStore([etcd_server.endpoint], namespace=second)
    # A namespace that is a string prefix of another must still not see it.
    three = EtcdStore([etcd_server.endpoint], namespace=first[:-1])
    try:
        await one.put("/k", b"one")
        await two.put("/k", b"two")
        await two.put("/only-two", b"x")
        await three.put("/k", b"three")
        got = await one.get("/k")
        assert got is not None and (got.key, got.value) == ("/k", b"one")
        assert await one.get("/only-two") is None
        assert [kv.key for kv in (await one.range("")).items] == ["/k"]
        assert [kv.key for kv in (await two.range("/")).items] == ["/k", "/only-two"]
        assert [kv.value for kv in (await three.range("")).items] == [b"three"]
        assert (await one.status()).keys == 1
        assert (await two.status()).keys == 2
        with pytest.raises(NotFound):
            await one.delete("/only-two")
        start = (await one.range("/")).revision + 1
        await two.put("/k", b"two again")
        await one.put("/k", b"one again")
        async with asyncio.timeout(5):
            async for event in one.watch("", start):
                assert (event.key, event.value) == ("/k", b"one again")
                break
    finally:
        for store in (one, two, three):
            await store.close()


async def test_keep_alive_forever_keeps_a_short_lease(etcd_server: EtcdServer) -> None:
    store = EtcdStore([etcd_server.endpoint], namespace=_namespace())
    try:
        lease = await store.grant(2)
        await store.put("/lease/held", b"v", lease=lease)
        task = store.keep_alive_forever(lease, 2)
        await asyncio.sleep(5)
        assert not task.done()
        assert await store.get("/lease/held") is not None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with asyncio.timeout(8):  # without the keep-alive it now expires
            while await store.get("/lease/held") is not None:
                await asyncio.sleep(0.2)
    finally:
        await store.close()


async def test_keep_alive_forever_ends_with_not_found_when_the_lease_is_gone(
    etcd_server: EtcdServer,
) -> None:
    store = EtcdStore([etcd_server.endpoint], namespace=_namespace())
    try:
        lease = await store.grant(5)
        await store.revoke(lease)
        task = store.keep_alive_forever(lease, 5)
        with pytest.raises(NotFound, match="lease"):
            await asyncio.wait_for(task, 5)
    finally:
        await store.close()


async def test_close_ends_keep_alives(etcd_server: EtcdServer) -> None:
    store = EtcdStore([etcd_server.endpoint], namespace=_namespace())
    lease = await store.grant(5)
    keeper = store.keep_alive_forever(lease, 5)
    await asyncio.sleep(0.2)
    assert not keeper.done()
    await store.close()
    assert keeper.cancelled()


async def test_status_names_etcd_and_its_version(etcd_server: EtcdServer) -> None:
    store: KeyValueStore = EtcdStore([etcd_server.endpoint], namespace=_namespace())
    try:
        rev = await store.put("/s", b"1")
        status = await store.status()
        assert (status.backend, status.endpoint, status.keys) == ("etcd", etcd_server.endpoint, 1)
        assert status.revision >= rev
        assert "etcd 3." in status.detail
    finally:
        await store.close()


def test_endpoints_are_parsed_and_checked() -> None:
    assert parse_endpoint("10.0.0.1") == ("10.0.0.1", 2379)
    assert parse_endpoint("http://etcd.cluster:2479/") == ("etcd.cluster", 2479)
    assert parse_endpoint("[::1]:2379") == ("[::1]", 2379)
    assert parse_endpoint("https://etcd.cluster:2379") == ("etcd.cluster", 2379)  # TLS
    for bad in ("", "host:port", "host:70000", "https://"):
        with pytest.raises(ValidationError, match="endpoints"):
            parse_endpoint(bad)
    with pytest.raises(ValidationError, match="namespace"):
        EtcdStore(["127.0.0.1:2379"], namespace="no-slash")


def test_missing_etcd_binary_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.support.etcd_server.ETCD_BIN", str(tmp_path / "no-etcd"))
    with pytest.raises(RuntimeError, match=r"scripts/setup\.sh"):
        EtcdServer(tmp_path).start()


@pytest.mark.etcd
async def test_a_read_goes_to_the_next_endpoint_when_the_first_listed_is_down(
        etcd_server: EtcdServer) -> None:
    """One call (as the CLI makes) succeeds although the first endpoint listed is a member
    that is down: a read is tried on each endpoint in turn. A write is not retried."""
    with socket.socket() as probe:  # a loopback port where nothing listens
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    namespace = f"/next-{uuid.uuid4().hex[:8]}"
    live = EtcdStore([etcd_server.endpoint], namespace=namespace)
    await live.put("/k", b"v")
    await live.close()
    for read in ("get", "range", "page"):
        store = EtcdStore([dead, etcd_server.endpoint], namespace=namespace, timeout=1.0)
        try:
            if read == "get":
                got = await store.get("/k")
                assert got is not None and got.value == b"v"
            elif read == "range":
                assert [kv.key for kv in (await store.range("/")).items] == ["/k"]
            else:
                assert [kv.key for kv in (await store.page("/", limit=5)).items] == ["/k"]
        finally:
            await store.close()
    store = EtcdStore([dead, etcd_server.endpoint], namespace=namespace, timeout=1.0)
    try:
        with pytest.raises(StoreUnavailable):
            await store.put("/w", b"x")  # the first call of a write: refused, not repeated
        assert await store.get("/w") is None  # ...and the next call goes to the live member
    finally:
        await store.close()
