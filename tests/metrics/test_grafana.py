"""contrib/grafana/provisioner.json: a Grafana dashboard whose every query uses only metrics the
appliance or the scheduler export, as read from the exposition of the live apps."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from provisioner.api.app import create_app
from provisioner.scheduler.app import create_app as scheduler_app
from provisioner.scheduler.state import SchedulerState
from provisioner.store.memory import MemoryStore
from tests.api.conftest import api_settings, open_api

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "provisioner.json"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                            "_created"),
            "gauge": ("",), "summary": ("_sum", "_count", "_created")}
#: PromQL words that are neither functions (followed by "(") nor metric names
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset"}
#: what a panel needs to show (the dashboard's purpose)
WANTED = {"provisioner_boot_stage_seconds_count", "provisioner_boot_stage_seconds_bucket",
          "provisioner_nodes", "provisioner_refused_total", "provisioner_http_bytes_total",
          "provisioner_tftp_bytes_total"}


def exported(text: str) -> set[str]:
    """Every sample name an exposition can carry, suffixes included, from its families."""
    return {family.name + suffix for family in text_string_to_metric_families(text)
            for suffix in SUFFIXES.get(family.type, ("",))}


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: strings, label matchers, ranges and the label
    lists of by/without taken out, what remains is functions (followed by "(") and names."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        if match.group() not in KEYWORDS and not rest.startswith("("):
            names.add(match.group())
    return names


async def _expositions(tmp_path: Path) -> str:
    api, inventory = await open_api(MemoryStore(), api_settings(tmp_path))
    state = SchedulerState(MemoryStore())
    await state.load()
    texts = []
    try:
        for app in (create_app(api.ctx), scheduler_app(state)):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 9))
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
                answer = await client.get("/metrics")
                assert answer.status_code == 200
                texts.append(answer.text)
    finally:
        await api.client.aclose()
        await inventory.stop()
    return "".join(texts)


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = dashboard["panels"]
    return panels


async def test_the_dashboard_is_a_grafana_dashboard_over_exported_metrics(
        tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["title"], str) and isinstance(dashboard["uid"], str)
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["panels"]
    names = exported(await _expositions(tmp_path))
    used: set[str] = set()
    ids = set()
    for panel in _panels(dashboard):
        assert {"id", "type", "title", "gridPos", "targets"} <= panel.keys(), panel
        assert panel["datasource"]["type"] == "prometheus"
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        ids.add(panel["id"])
        for target in panel["targets"]:
            found = metric_names(target["expr"])
            assert found, target["expr"]
            assert found <= names, (panel["title"], found - names)
            used |= found
    assert len(ids) == len(_panels(dashboard))
    assert used >= WANTED, WANTED - used


def test_the_name_reader_takes_out_labels_and_functions() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, stage) '
            '(rate(provisioner_boot_stage_seconds_bucket{stage!="x"}[5m])))')
    assert metric_names(expr) == {"provisioner_boot_stage_seconds_bucket"}
