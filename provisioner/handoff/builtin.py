"""The handoff to our own scheduler (`provisioner scheduler serve`) over its REST API.

Transport errors are mapped here, once: no answer (refused, reset, timed out) or a 5xx is a
HandoffError (retry later); a 4xx means the request itself is wrong (HandoffRejected), except
404 on drain/resume/is_idle, which names the missing node. An `http://` scheduler is reached
with the lean client in handoff/http.py (a tenth of httpx's CPU per request); `https://` with
httpx.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

from provisioner.errors import HandoffError, NotFound
from provisioner.handoff.base import HandoffNode, HandoffRejected
from provisioner.handoff.http import JsonHttp


class _Transport(Protocol):
    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]: ...

    async def close(self) -> None: ...


class _Httpx:
    """The same interface over httpx, for TLS."""

    def __init__(self, url: str, timeout: float, headers: dict[str, str]) -> None:
        import httpx

        self._client = httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import httpx

        try:
            response = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ConnectionError(repr(exc)) from None
        try:
            return response.status_code, response.json() if response.content else None
        except ValueError:
            return response.status_code, {"message": response.text[:200]}

    async def close(self) -> None:
        await self._client.aclose()


def _node_path(name: str) -> str:
    return f"/sched/v1/nodes/{quote(name, safe='')}"


class BuiltinHandoff:
    def __init__(self, url: str, *, timeout: float = 5.0, token: str = "") -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http: _Transport = (JsonHttp(self.url, timeout=timeout, headers=headers)
                                  if self.url.startswith("http://")
                                  else _Httpx(self.url, timeout, headers))

    async def register(self, node: HandoffNode) -> None:
        body: dict[str, Any] = {"cpus": node.cpus, "memory_mib": node.memory_mib,
                "features": list(node.features), "partition": node.partition,
                "mac": str(node.mac)}
        if node.agent_hash:  # the agent's credential of this boot replaces the last one's
            body["agent_hash"] = node.agent_hash
        await self._call("PUT", _node_path(node.name), body)

    async def drain(self, name: str, reason: str) -> None:
        await self._call("POST", f"{_node_path(name)}/drain", {"reason": reason})

    async def resume(self, name: str) -> None:
        await self._call("POST", f"{_node_path(name)}/resume", None)

    async def is_idle(self, name: str) -> bool:
        node = await self._call("GET", _node_path(name), None)
        return node.get("state") in ("idle", "drained", "down")

    async def close(self) -> None:
        await self._http.close()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None
                    ) -> dict[str, Any]:
        try:
            status, data = await self._http.request(method, path, body)
        except (OSError, ValueError) as exc:
            raise HandoffError(f"scheduler at {self.url} is not answering ({exc}); the "
                               "handoff is retried") from None
        message = str(data.get("message", data)) if isinstance(data, dict) else str(data)
        if status >= 500:
            raise HandoffError(f"scheduler at {self.url}: {method} {path} failed with "
                               f"{status}: {message}")
        if status == 404 and method != "PUT":
            raise NotFound(f"scheduler at {self.url}: {message}")
        if status >= 400:
            raise HandoffRejected(f"scheduler at {self.url} refused {method} {path}: {message}")
        return data if isinstance(data, dict) else {}
