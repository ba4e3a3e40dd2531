"""etcd auth on a channel: a token for the user and password, on every call, renewed when etcd
forgets it.

etcd exchanges a user name and password for a token (Auth.Authenticate) and expects it in the
`token` metadata of every call. Its tokens end: a simple token after --auth-token-ttl seconds
unused (5 minutes by default), every simple token when etcd restarts. etcd then answers
UNAUTHENTICATED "invalid auth token"; a unary call is then authenticated again and retried once,
so callers never see it. A stream (watch, lease keep-alive) gets the current token when it
opens; the watch reopens a broken stream after `forget()` (see watch.py for why always).

aetcd's client authenticates once and never renews, and we call the stubs directly, so this is
a gRPC client interceptor on our own channel.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import aetcd.rpc
import grpc  # type: ignore[import-untyped]  # (grpcio ships no type hints)

rpc: Any = aetcd.rpc  # untyped generated code, as in connection.py

AUTHENTICATE: Final = "/etcdserverpb.Auth/Authenticate"
AUTHENTICATE_TIMEOUT: Final = 10.0  # seconds, for a stream's token (streams have no deadline)


def token_expired(error: Any) -> bool:
    """etcd no longer knows the token the call carried."""
    return bool(error.code() == grpc.StatusCode.UNAUTHENTICATED)


class TokenAuth(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # untyped base
    """Puts the user's token on every call of one channel (see the module docstring).

    Give the channel both `self` and `self.streams`: gRPC files an interceptor under the first
    kind it is an instance of only, so one object cannot serve unary calls and streams."""

    def __init__(self, user: str, password: str) -> None:
        self._user = user
        self._password = password
        self._token = ""
        self._lock = asyncio.Lock()
        self.channel: Any = None  # set once the channel is built (it needs us first)
        self.streams = _StreamTokenAuth(self)

    def forget(self) -> None:
        """The next call authenticates again."""
        self._token = ""

    async def _current(self, details: Any, stale: str = "") -> str:
        async with self._lock:  # one Authenticate for the calls that all found no token
            if not self._token or self._token == stale:
                request = rpc.AuthenticateRequest(name=self._user, password=self._password)
                response = await rpc.AuthStub(self.channel).Authenticate(
                    request, timeout=details.timeout or AUTHENTICATE_TIMEOUT,
                    wait_for_ready=details.wait_for_ready)
                self._token = str(response.token)
            return self._token

    @staticmethod
    def _with(details: Any, token: str) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), ("token", token))
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        details = client_call_details
        if _method(details) == AUTHENTICATE:
            return await continuation(details, request)
        token = await self._current(details)
        call = await continuation(self._with(details, token), request)
        try:
            await call
        except grpc.aio.AioRpcError as error:
            if not token_expired(error):
                return call  # the caller's await raises the error
            token = await self._current(details, stale=token)
            return await continuation(self._with(details, token), request)
        return call

    async def for_stream(self, details: Any) -> Any:
        """`details` with the current token, for a stream about to open."""
        return self._with(details, await self._current(details))


class _StreamTokenAuth(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """TokenAuth's half for streams (watch, lease keep-alive)."""

    def __init__(self, auth: TokenAuth) -> None:
        self._auth = auth

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                      request_iterator: Any) -> Any:
        details = await self._auth.for_stream(client_call_details)
        return await continuation(details, request_iterator)


def _method(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)
