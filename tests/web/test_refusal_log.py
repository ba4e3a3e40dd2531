"""Refusals are logged a line per source a minute, with the count of those not logged."""

from __future__ import annotations

import logging

import pytest

from provisioner.web.refusals import EVERY, RefusalLog


def test_a_flood_from_one_source_is_one_line_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    refusals = RefusalLog(logging.getLogger("test.refusals"), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        for _ in range(1000):
            refusals.refused("192.0.2.9", "poll (no credential)")
            refusals.refused("192.0.2.10", "poll (no credential)")
        now[0] += EVERY
        refusals.refused("192.0.2.9", "poll (no credential)")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and refusals.total == 2001
    assert "192.0.2.9" in lines[0] and "192.0.2.10" in lines[1]
    assert "(999 more refused since the last line)" in lines[2]
