"""Redfish (DMTF DSP0266) over HTTPS with httpx: one ComputerSystem, basic auth.

`power_address` is either the service root (`https://bmc`, the one system in
/redfish/v1/Systems is used) or the system itself (`https://bmc/redfish/v1/Systems/1`, needed
when the BMC manages several). Actions are ComputerSystem.Reset with ResetType On, ForceOff,
ForceRestart (PowerCycle when the BMC offers only that) and GracefulShutdown.

Plain http:// is refused unless the node's `power_insecure` is true: basic auth sends the
password with every request. Certificates are verified unless the node's `power_tls_verify`
is "false" (a self-signed BMC) or names a CA bundle. Credentials never leave this class: the
password sits in a Secret, user info in the URL is refused, and error messages quote neither.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from provisioner.errors import PowerError
from provisioner.power.base import DEFAULT_TIMEOUT, PowerState, PowerTarget, Secret

log = logging.getLogger(__name__)
SYSTEMS: Final = "/redfish/v1/Systems"
ON_STATES: Final = frozenset({"On", "PoweringOff"})
OFF_STATES: Final = frozenset({"Off", "PoweringOn"})


def _split_address(address: str) -> tuple[str, str | None]:
    """(scheme://host[:port], the system's path or None)."""
    parts = urlsplit(address if "://" in address else f"https://{address}")
    if parts.username is not None or parts.password is not None:
        raise PowerError("power_address must not hold credentials; put them in power_user "
                         "and power_password")
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise PowerError("power_address for redfish must be an http(s) URL such as "
                         "https://bmc.example or https://bmc/redfish/v1/Systems/1")
    base = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    path = parts.path.rstrip("/")
    return base, (path if path.startswith(SYSTEMS + "/") else None)


class RedfishDriver:
    kind = "redfish"

    def __init__(self, address: str, user: str, password: Secret, *,
                 verify: bool | str = True, timeout: float = DEFAULT_TIMEOUT,
                 insecure: bool = False) -> None:
        self.base, self._system = _split_address(address)
        if self.base.startswith("http://") and not insecure:
            raise PowerError(f"redfish over http:// ({self.base}) would send the BMC password "
                             "in clear; use https:// or set power_insecure=true on the node "
                             "or its group")
        self.user, self._password, self.verify, self.timeout = user, password, verify, timeout

    @classmethod
    def from_target(cls, target: PowerTarget) -> RedfishDriver:
        return cls(target.required_address(cls.kind), target.user, target.password,
                   verify=target.verify, timeout=target.timeout, insecure=target.insecure)

    def __repr__(self) -> str:
        return f"RedfishDriver({self.base!r}, user={self.user!r})"

    def _client(self) -> httpx.AsyncClient:
        auth = httpx.BasicAuth(self.user, self._password.reveal()) if self.user else None
        verify: bool | ssl.SSLContext = self.verify if isinstance(self.verify, bool) else (
            ssl.create_default_context(cafile=self.verify))
        return httpx.AsyncClient(base_url=self.base, auth=auth, verify=verify,
                                 timeout=self.timeout, follow_redirects=False,
                                 headers={"Accept": "application/json"})

    async def _request(self, client: httpx.AsyncClient, method: str, path: str,
                       body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = await client.request(method, path, json=body)
        except httpx.ConnectError as exc:
            raise PowerError(self._connect_hint(exc)) from None
        except httpx.HTTPError as exc:
            raise PowerError(f"Redfish {method} {self.base}{path} failed: "
                             f"{exc.__class__.__name__}; check power_address and that the BMC "
                             "answers") from None
        if response.status_code in (401, 403):
            raise PowerError(f"Redfish at {self.base} refused user {self.user!r} "
                             f"(HTTP {response.status_code}); check power_user and power_password")
        if response.status_code >= 400:
            raise PowerError(f"Redfish {method} {path} answered HTTP {response.status_code}: "
                             f"{_message(response)}")
        if not response.content:
            return {}
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            raise PowerError(f"{self.base}{path} did not answer JSON; is it a Redfish "
                             "service?") from None
        return data

    def _connect_hint(self, exc: Exception) -> str:
        text = str(exc)
        if "CERTIFICATE" in text.upper() or "SSL" in text.upper():
            return (f"the certificate of {self.base} is not trusted ({text}); install its CA "
                    "and set power_tls_verify=/path/ca.pem, or power_tls_verify=false for a "
                    "self-signed BMC")
        return f"cannot connect to {self.base} ({text}); check power_address and the network"

    async def _system_path(self, client: httpx.AsyncClient) -> str:
        if self._system is None:
            members = (await self._request(client, "GET", SYSTEMS)).get("Members", [])
            if len(members) != 1:
                raise PowerError(f"{self.base} manages {len(members)} systems; set "
                                 f"power_address to one of them ({SYSTEMS}/ID)")
            self._system = str(members[0]["@odata.id"]).rstrip("/")
        return self._system

    async def status(self) -> PowerState:
        async with self._client() as client:
            system = await self._request(client, "GET", await self._system_path(client))
        state = system.get("PowerState")
        if state in ON_STATES:
            return PowerState.ON
        if state in OFF_STATES:
            return PowerState.OFF
        return PowerState.UNKNOWN

    async def _reset(self, *preferred: str) -> None:
        async with self._client() as client:
            path = await self._system_path(client)
            system = await self._request(client, "GET", path)
            action = system.get("Actions", {}).get("#ComputerSystem.Reset", {})
            target = action.get("target", f"{path}/Actions/ComputerSystem.Reset")
            allowed = action.get("ResetType@Redfish.AllowableValues")
            choice = next((t for t in preferred if allowed is None or t in allowed), None)
            if choice is None:
                raise PowerError(f"{self.base}{path} offers no reset type among "
                                 f"{', '.join(preferred)} (it offers {', '.join(allowed or [])})")
            log.info("redfish %s%s: ComputerSystem.Reset %s", self.base, path, choice)
            await self._request(client, "POST", target, {"ResetType": choice})

    async def on(self) -> None:
        await self._reset("On")

    async def off(self) -> None:
        await self._reset("ForceOff")

    async def cycle(self) -> None:
        if await self.status() is PowerState.OFF:
            await self._reset("On")  # a restart of a machine that is off is refused by many BMCs
        else:
            await self._reset("ForceRestart", "PowerCycle")

    async def soft_off(self) -> None:
        await self._reset("GracefulShutdown")

    async def boot_pxe_once(self) -> None:
        async with self._client() as client:
            path = await self._system_path(client)
            await self._request(client, "PATCH", path, {"Boot": {
                "BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}})
        log.info("redfish %s%s: next boot from the network (once)", self.base, path)


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        extended = error.get("@Message.ExtendedInfo") or [{}]
        return str(extended[0].get("Message") or error.get("message") or response.reason_phrase)
    except (ValueError, AttributeError):
        return response.reason_phrase
