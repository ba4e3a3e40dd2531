"""The edge of the etcd backend: endpoints, the gRPC channels, timeouts, error mapping and keys.

Shape of every call: `async with connection.call("put") as conn:` bounds the call by the store's
timeout and maps gRPC failures to our errors in one place (`call` and `_map_error`), so no other
method has a try/except for the transport. Calls wait for the channel to be ready (gRPC
`wait_for_ready`) rather than failing on the first refused connection, so an etcd restart that
fits inside the timeout is invisible to callers; one that does not gives `StoreUnavailable`
naming the endpoint, and the next calls go to the next endpoint.

TLS and etcd auth (security.py, auth.py) apply to every channel: TLS when [store] ca or cert
is set or the endpoints say https://, a token interceptor when [store] user is set. A call that
cannot connect asks the channel why (one fail-fast call) so the error names the failed check
(an untrusted certificate, no client certificate, plain text against TLS) instead of a timeout.

Keys: the optional `namespace` is prepended to every key on the way in and stripped on the way
out, so several test runs or installations can share one etcd without seeing each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aetcd.rpc

from provisioner.errors import StoreError, StoreUnavailable, ValidationError
from provisioner.store.base import Compacted, KeyValue
from provisioner.store.common import check_key, lease_gone, prefix_end
from provisioner.store.etcd.auth import TokenAuth, token_expired
from provisioner.store.etcd.security import EtcdSecurity

log = logging.getLogger(__name__)

rpc: Any = aetcd.rpc  # untyped generated protobuf/gRPC code; one name keeps the Any in one place

DEFAULT_PORT: Final = 2379

# gRPC channel settings. The defaults suit long-lived services talking to flaky WANs; a head node
# talks to etcd on a LAN and must notice a restart quickly.
CHANNEL_OPTIONS: Final[dict[str, int]] = {
    # Reconnect within a second of etcd coming back (gRPC's default backoff grows to 120 s).
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    # Notice a dead peer on an otherwise quiet watch stream (no RST after a power cut). etcd
    # refuses pings more often than every 5 s (--grpc-keepalive-min-time), so stay above that.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    # Range pages are bounded, but one key may hold up to etcd's 1.5 MiB request limit.
    "grpc.max_receive_message_length": 16 * 1024 * 1024,
}
PROBE_TIMEOUT: Final = 1.0  # seconds for the fail-fast call that asks a channel why it failed

# gRPC status codes that mean "etcd cannot be reached or cannot serve right now".
_UNAVAILABLE_CODES: Final = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "ABORTED"}
)


@dataclass(slots=True)
class Conn:
    """One endpoint's gRPC channel and the stubs on it."""

    endpoint: str
    channel: Any  # grpc.aio.Channel
    auth: TokenAuth | None
    kv: Any
    lease: Any
    watch: Any
    maintenance: Any


def endpoint_scheme(endpoint: str) -> str:
    """"https", "http", or "" when the endpoint names no scheme."""
    text = endpoint.strip()
    for scheme in ("https", "http"):
        if text.startswith(f"{scheme}://"):
            return scheme
    return ""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """`host`, `host:port`, `http(s)://host:port` or `[v6]:port` -> (host, port)."""
    text = endpoint.strip()
    text = text.removeprefix(f"{endpoint_scheme(text)}://").rstrip("/")
    if not text:
        raise ValidationError("endpoints", "an etcd endpoint is empty; give host:port")
    host, port = text, DEFAULT_PORT
    if text.startswith("["):  # [::1]:2379 — keep the brackets, gRPC targets need them
        end = text.find("]")
        if end < 0:
            raise ValidationError("endpoints", f"{endpoint}: unbalanced '[' in IPv6 address")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest:
            port = _port(endpoint, rest.removeprefix(":"))
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        port = _port(endpoint, port_text)
    return host, port


def _port(endpoint: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValidationError("endpoints", f"{endpoint}: port must be a number 1-65535")
    return int(text)


class Connection:
    """The channels to a list of etcd endpoints (one in use at a time), the namespace and the
    per-call options. The store's KV, lease and watch code all go through it."""

    def __init__(self, endpoints: Sequence[str], *, namespace: str, timeout: float,
                 security: EtcdSecurity | None = None) -> None:
        if isinstance(endpoints, str):  # a lone "host:port" would otherwise be split per char
            endpoints = [endpoints]
        if not endpoints:
            raise ValidationError("endpoints", "give at least one etcd endpoint (host:port)")
        if namespace and (not namespace.startswith("/") or namespace.endswith("/")):
            raise ValidationError(
                "namespace", f"{namespace!r} must start with '/' and not end with '/'"
            )
        if timeout <= 0:
            raise ValidationError("timeout", "must be a positive number of seconds")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.security = security or EtcdSecurity()
        self.tls = _use_tls(endpoints, self.security)
        self._names = [f"{host}:{port}" for host, port in self.endpoints]
        self.namespace = namespace
        self._ns = namespace.encode()
        self._ns_len = len(self._ns)
        self.timeout = timeout
        # Per unary call: a gRPC deadline (so etcd drops work nobody waits for), and wait for the
        # channel to connect instead of failing on the first refused connection.
        self.options: dict[str, Any] = {"timeout": timeout, "wait_for_ready": True}
        self._current = 0
        self._conns: dict[int, Conn] = {}
        self.streams: set[Any] = set()  # open watch calls, cancelled by close()
        self.closed = False

    @property
    def endpoint(self) -> str:
        """The endpoint calls currently go to."""
        return self._names[self._current]

    # -- channels, timeouts, error mapping -----------------------------------------------------

    async def connect(self) -> Conn:
        """The current endpoint's channel, created on first use."""
        index = self._current
        conn = self._conns.get(index)
        if conn is not None:
            return conn
        if self.closed:
            raise StoreUnavailable("the etcd store was closed; open a new one")
        host, port = self.endpoints[index]
        security = self.security
        auth = TokenAuth(security.user, security.password) if security.user else None
        options = list(CHANNEL_OPTIONS.items())
        interceptors = [auth, auth.streams] if auth is not None else None
        # Creating a channel does no network round trip; it connects on the first call.
        if self.tls:
            channel = rpc.secure_channel(f"{host}:{port}", security.credentials(),
                                         options=options, interceptors=interceptors)
        else:
            channel = rpc.insecure_channel(f"{host}:{port}", options=options,
                                           interceptors=interceptors)
        if auth is not None:
            auth.channel = channel
        conn = Conn(
            endpoint=self._names[index],
            channel=channel,
            auth=auth,
            kv=rpc.KVStub(channel),
            lease=rpc.LeaseStub(channel),
            watch=rpc.WatchStub(channel),
            maintenance=rpc.MaintenanceStub(channel),
        )
        self._conns[index] = conn
        return conn

    @contextlib.asynccontextmanager
    async def call(self, what: str, *, lease: int = 0) -> AsyncIterator[Conn]:
        """Bound one call by the timeout and translate transport failures (the only place)."""
        conn: Conn | None = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self.connect()
                yield conn
        except TimeoutError:
            reason = f"no answer within {self.timeout:g} s"
            raise await self._unreachable(conn, what, reason) from None
        except rpc.AioRpcError as error:
            if error.code().name in _UNAVAILABLE_CODES:
                reason = str(error.details() or error.code().name)
                raise await self._unreachable(conn, what, reason) from None
            raise self._map_error(error, conn, what, lease) from None

    async def _unreachable(self, conn: Conn | None, what: str, reason: str) -> StoreUnavailable:
        """StoreUnavailable, saying which check failed when the channel can tell."""
        explained = await self.diagnose(conn)
        if explained is None:
            return self._unavailable(conn, what, reason)
        where = self._where(conn)
        if conn is not None:
            self._fail_over(conn)
        return StoreUnavailable(f"etcd at {where} cannot be used for {what}: {explained}")

    async def diagnose(self, conn: Conn | None) -> str | None:
        """Why `conn`'s channel cannot connect, in words naming the setting to check; None when
        it is not failing or the reason is not one security.py recognises."""
        if conn is None:
            return None
        if conn.channel.get_state(try_to_connect=False).name != "TRANSIENT_FAILURE":
            return None
        try:  # fail-fast: a failing channel answers at once with its last connection error
            await conn.maintenance.Status(rpc.StatusRequest(), timeout=PROBE_TIMEOUT,
                                          wait_for_ready=False)
        except rpc.AioRpcError as error:
            return self.security.explain_connect(str(error.details()), tls=self.tls)
        return None

    def _map_error(self, error: Any, conn: Conn | None, what: str, lease: int) -> StoreError:
        code = error.code().name
        details = str(error.details() or code)
        refused = _auth_refusal(details, self.security.user)
        if refused is not None or token_expired(error):
            return StoreError(f"etcd at {self._where(conn)} refused {what}: "
                              f"{refused or details}")
        if code == "NOT_FOUND" and "lease" in details:
            return lease_gone(lease)
        if code == "OUT_OF_RANGE" and "compacted" in details:
            return Compacted(f"{what}: {details}; read again with range() and watch from there")
        if code == "RESOURCE_EXHAUSTED" and "space" in details:
            return StoreError(
                f"etcd at {self._where(conn)} is out of space ({details}): compact and defragment "
                "it, then disarm the NOSPACE alarm (`etcdctl alarm disarm`)"
            )
        return StoreError(f"etcd at {self._where(conn)} refused {what}: {details}")

    def _unavailable(self, conn: Conn | None, what: str, reason: str) -> StoreUnavailable:
        where = self._where(conn)
        if conn is not None:
            state = conn.channel.get_state(try_to_connect=False)
            if state.name == "TRANSIENT_FAILURE":
                reason = f"{reason}; cannot connect"
            self._fail_over(conn)
        return StoreUnavailable(
            f"etcd at {where} is unavailable for {what} ({reason}); check that etcd is running "
            "and reachable from this host (`provisioner store status`)"
        )

    def _where(self, conn: Conn | None) -> str:
        return conn.endpoint if conn is not None else self.endpoint

    def _fail_over(self, conn: Conn) -> None:
        """Send the next calls to the next endpoint (the failed call is not retried)."""
        if len(self.endpoints) > 1 and self._conns.get(self._current) is conn:
            self._current = (self._current + 1) % len(self.endpoints)
            log.warning("etcd at %s failed; switching to %s", conn.endpoint, self.endpoint)

    def current(self) -> Conn | None:
        """The current endpoint's channel, if one was created."""
        return self._conns.get(self._current)

    def next_endpoint(self) -> None:
        """After a broken watch stream: with several endpoints, try the next one."""
        conn = self._conns.get(self._current)
        if conn is not None:
            self._fail_over(conn)

    async def close(self) -> None:
        """Cancel the open watch calls and close the channels. Idempotent."""
        self.closed = True
        for call in list(self.streams):
            call.cancel()
        self.streams.clear()
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.channel.close()

    # -- keys ---------------------------------------------------------------------------------

    def key(self, key: str) -> bytes:
        return self._ns + check_key(key).encode()

    def prefix(self, prefix: str) -> tuple[bytes, bytes]:
        """The [start, end) byte range of the keys under `prefix` in this namespace."""
        # Every key starts with "/", so an empty prefix means "/": with a namespace that also
        # keeps "/ns" from matching a neighbour "/ns2/...".
        start = self.namespace + (prefix or "/")
        return start.encode(), prefix_end(start).encode()

    def name(self, raw: bytes) -> str:
        """The contract's key for etcd's `raw` key (the namespace stripped)."""
        return raw[self._ns_len :].decode()

    def kv(self, kv: Any) -> KeyValue:
        return KeyValue(self.name(kv.key), kv.value, kv.create_revision, kv.mod_revision, kv.lease)


def _use_tls(endpoints: Sequence[str], security: EtcdSecurity) -> bool:
    """TLS when the endpoints say https:// or a CA or client certificate is configured."""
    schemes = {endpoint_scheme(e) for e in endpoints} - {""}
    if len(schemes) > 1:
        raise ValidationError("endpoints", "mixes http:// and https://; etcd serves clients "
                              "one way, give them all the same scheme")
    if "http" in schemes and security.tls_files:
        raise ValidationError("endpoints", "http:// endpoints with [store] ca or cert set; "
                              "use https:// (TLS) or drop ca/cert")
    return "https" in schemes or security.tls_files


def _auth_refusal(details: str, user: str) -> str | None:
    """What an etcd auth refusal means for the operator (etcdserver's words -> ours)."""
    name = f"user {user!r}" if user else "the client certificate's user (its CN)"
    if "authentication failed" in details:
        return (f"{details.removeprefix('etcdserver: ')}: check [store] user ({user}) and its "
                "password (password_file or PROVISIONER_STORE_PASSWORD)")
    if "user name is empty" in details:
        return ("etcd has authentication enabled and we gave no user: set [store] user and "
                "password_file, or use a client certificate whose CN is an etcd user")
    if "authentication is not enabled" in details:
        return ("[store] user is set but etcd has authentication disabled: run "
                "`etcdctl auth enable`, or remove user and password")
    if "permission denied" in details:
        return (f"{name} lacks the permission; grant its role readwrite on the namespace "
                "(`etcdctl role grant-permission ROLE --prefix=true readwrite /NAMESPACE`)")
    if "invalid auth token" in details:
        return "the auth token was refused again after renewing it; check the user in etcd"
    return None
