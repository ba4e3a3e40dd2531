"""The DHCP server's hold sweeper and lease-book follower run under the ambient supervisor: a
sweep that fails unexpectedly is restarted instead of ending the sweeps for good."""

from __future__ import annotations

import asyncio
import socket

import pytest

from provisioner.config import DhcpSettings, SubnetSettings
from provisioner.dhcp.server import DhcpServer
from provisioner.inventory import keys
from provisioner.inventory.repository import Inventory
from provisioner.runtime import supervisor
from provisioner.runtime.supervisor import Supervisor
from provisioner.store.memory import MemoryStore


def _free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


async def test_the_hold_sweeper_restarts_after_an_unexpected_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ip = "127.0.0.1"
    subnet = SubnetSettings(network="10.77.0.0/24", pool_start="10.77.0.10",
                            pool_end="10.77.0.99")
    settings = DhcpSettings(mode="proxy", listen=ip, port=_free_udp_port(ip), server_ip=ip,
                            subnets=(subnet,), detect_other_servers=False, offer_hold=2)
    store = MemoryStore()
    inventory = Inventory(store)
    sup = Supervisor(first_delay=0.05)
    undo = supervisor.install(sup)
    server = DhcpServer(settings, inventory)
    sweeps: list[float] = []
    expire_holds = server.leases.expire_holds

    def failing_once(now: float) -> None:
        sweeps.append(now)
        if len(sweeps) == 1:
            raise IndexError("a bug in the hold table")
        expire_holds(now)

    monkeypatch.setattr(server.leases, "expire_holds", failing_once)
    try:
        await inventory.start()
        await server.start()
        names = {state.name for state in sup.states()}
        assert {"dhcp hold sweeper", f"follower {keys.LEASES}"} <= names
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(sweeps) < 2 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        [sweeper] = [s for s in sup.states() if s.name == "dhcp hold sweeper"]
        assert len(sweeps) >= 2 and sweeper.restarts == 1 and not sweeper.down
        assert sweeper.last_error == "IndexError: a bug in the hold table"
    finally:
        await server.close()
        await inventory.stop()
        undo()
        assert sup.states() == []
        await store.close()
