"""Metrics read from existing state at scrape time, and the exposition of one process.

The DHCP server already counts its packets (dhcp/counters.py), the inventory cache holds every
node's state, the supervisor every background task's: these collectors read them when
Prometheus scrapes, so nothing is counted twice and a scrape costs one pass over the cache.
Each takes a callable rather than the object, so this package imports none of the planes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final, Protocol

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector, CollectorRegistry

from provisioner.nodes.model import NodeState

#: the text format 0.0.4, which every Prometheus 2 reads
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
#: DHCP counter prefixes (dhcp/counters.py) that count packets not answered
_DHCP_DROPS: Final = ("dropped:", "ignored:", "offer_withheld:", "ack_withheld:")


class DhcpCollector:
    """The DHCP server's counters: packets received by message type, replies sent by type,
    packets dropped or not answered by reason, and the server's other events."""

    def __init__(self, counters: Callable[[], Mapping[str, int] | None]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        received = CounterMetricFamily("provisioner_dhcp_received",
                                       "DHCP packets decoded, by message type", labels=["message"])
        replies = CounterMetricFamily("provisioner_dhcp_replies",
                                      "DHCP replies sent, by type (offer, ack, nak)",
                                      labels=["type"])
        dropped = CounterMetricFamily("provisioner_dhcp_dropped",
                                      "DHCP packets dropped or not answered, by reason",
                                      labels=["reason"])
        other = CounterMetricFamily("provisioner_dhcp_events",
                                    "Other DHCP server events (dhcp/counters.py)",
                                    labels=["event"])
        for key, value in sorted((self._counters() or {}).items()):
            family, label = _dhcp_series(key)
            {"received": received, "replies": replies, "dropped": dropped,
             "other": other}[family].add_metric([label], value)
        yield from (received, replies, dropped, other)


def _dhcp_series(key: str) -> tuple[str, str]:
    if key.startswith("received:"):
        return "received", key.removeprefix("received:")
    if key.startswith("sent:"):
        return "replies", key.removeprefix("sent:")
    if key == "rate_limited" or key.startswith(_DHCP_DROPS):
        return "dropped", key.replace(":", "_")
    return "other", key.replace(":", "_")


class NodesCollector:
    """Nodes by state, from the inventory cache; every state is shown, at 0 when empty."""

    def __init__(self, states: Callable[[], Iterable[str]]) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys((s.value for s in NodeState), 0)
        for state in self._states():
            counts[state] = counts.get(state, 0) + 1
        family = GaugeMetricFamily("provisioner_nodes", "Nodes by state", labels=["state"])
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family


class TaskView(Protocol):
    """What runtime/supervisor.py's TaskState shows of a task."""

    @property
    def name(self) -> str: ...
    @property
    def restarts(self) -> int: ...
    @property
    def down(self) -> bool: ...


class TasksCollector:
    """The supervised background tasks: restarts so far and whether each is up now."""

    def __init__(self, tasks: Callable[[], Iterable[TaskView]]) -> None:
        self._tasks = tasks

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily("provisioner_task_restarts",
                                       "Restarts of a background task after it failed",
                                       labels=["task"])
        up = GaugeMetricFamily("provisioner_task_up",
                               "1 while a background task runs, 0 while it waits to restart",
                               labels=["task"])
        for task in self._tasks():
            restarts.add_metric([task.name], task.restarts)
            up.add_metric([task.name], 0 if task.down else 1)
        yield from (restarts, up)


class SchedulerCollector:
    """The scheduler's queue: pending jobs, and jobs and nodes by state."""

    def __init__(self, jobs: Callable[[], Iterable[str]],
                 nodes: Callable[[], Iterable[str]]) -> None:
        self._jobs, self._nodes = jobs, nodes

    def collect(self) -> Iterator[Metric]:
        jobs = _count(self._jobs())
        depth = GaugeMetricFamily("provisioner_scheduler_queue_depth",
                                  "Jobs waiting for a node")
        depth.add_metric([], jobs.get("pending", 0))
        yield depth
        yield _gauge("provisioner_scheduler_jobs", "Jobs kept by the scheduler, by state", jobs)
        yield _gauge("provisioner_scheduler_nodes", "Scheduler nodes by state",
                     _count(self._nodes()))


def _count(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _gauge(name: str, documentation: str, counts: Mapping[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["state"])
    for state, count in sorted(counts.items()):
        family.add_metric([state], count)
    return family


class Exposition:
    """One process's metrics: its registry's (registry.py) and its scrape-time collectors."""

    def __init__(self, registry: CollectorRegistry, *collectors: Collector) -> None:
        self._registry, self._collectors = registry, collectors

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        for collector in self._collectors:
            yield from collector.collect()

    def render(self) -> bytes:
        return generate_latest(self)
