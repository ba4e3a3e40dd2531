"""The per-MAC rate limit in the server's glue, over real UDP on loopback (the `glue` fixture of
test_server_glue.py): a MAC sending faster than its bucket is dropped before any decision and
counted, logged once with its source address; another MAC is still answered."""

from __future__ import annotations

import logging

import pytest

from tests.dhcp.test_server_glue import PXE_REQUEST, Factory, glue  # noqa: F401 (fixture)
from tests.dhcp.test_vectors import wire

FLOODER = bytes.fromhex("525400badbad")
OTHER = bytes.fromhex("525400600d00")


async def test_a_flooding_mac_is_dropped_and_counted_and_another_is_answered(
        glue: Factory, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    lab = await glue(mac_burst=3, mac_rate=0.01)
    caplog.set_level(logging.WARNING, "provisioner.dhcp.server")
    for i in range(50):
        lab.send(wire(PXE_REQUEST, xid=i, chaddr=FLOODER, ciaddr="10.77.0.40"), 4011)
    await lab.until(lambda: lab.server.counters["rate_limited"] == 47, "47 requests dropped")
    answered = 0
    while answered < 3:  # the burst was answered; nothing more
        reply, _ = await lab.reply()
        assert reply.chaddr[:6] == FLOODER
        answered += 1
    lab.send(wire(PXE_REQUEST, xid=0x600D, chaddr=OTHER, ciaddr="10.77.0.41"), 4011)
    reply, _ = await lab.reply()
    assert (reply.xid, reply.chaddr[:6]) == (0x600D, OTHER)
    assert lab.server.counters["received:bootserverrequest"] == 4  # the dropped never decided
    lines = [r.getMessage() for r in caplog.records if "dropping requests" in r.getMessage()]
    assert len(lines) == 1 and "52:54:00:ba:db:ad" in lines[0] and lab.client.getsockname()[0] \
        in lines[0]
