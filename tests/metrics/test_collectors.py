"""The collectors and the stage tracker on our own logic: what series they make of the
counters, states and events they are given."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from provisioner.metrics import hooks
from provisioner.metrics.collectors import (
    DhcpCollector,
    Exposition,
    NodesCollector,
    SchedulerCollector,
    TasksCollector,
)
from provisioner.metrics.registry import APPLIANCE, SCHEDULER
from provisioner.metrics.stages import BootStages
from provisioner.scheduler.state import SchedulerState
from provisioner.store.memory import MemoryStore
from provisioner.store.timed import TimedStore

EMPTY = CollectorRegistry()
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(exposition: Exposition) -> Samples:
    text = exposition.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def shared(name: str, **labels: str) -> float:
    return APPLIANCE.get_sample_value(name, labels) or 0.0


def test_dhcp_counters_become_packets_by_type_and_drops_by_reason() -> None:
    counters = {"received:discover": 3, "sent:offer": 2, "sent:ack": 1, "sent:nak": 1,
                "dropped:truncated": 4, "ignored:unknown_node": 5, "rate_limited": 6,
                "offer_withheld:store_down": 7, "errors": 1}
    got = samples(Exposition(EMPTY, DhcpCollector(lambda: counters)))
    assert got[("provisioner_dhcp_received_total", (("message", "discover"),))] == 3
    assert got[("provisioner_dhcp_replies_total", (("type", "offer"),))] == 2
    assert got[("provisioner_dhcp_replies_total", (("type", "nak"),))] == 1
    for reason, value in [("dropped_truncated", 4), ("ignored_unknown_node", 5),
                          ("rate_limited", 6), ("offer_withheld_store_down", 7)]:
        assert got[("provisioner_dhcp_dropped_total", (("reason", reason),))] == value
    assert got[("provisioner_dhcp_events_total", (("event", "errors"),))] == 1


def test_no_dhcp_server_no_dhcp_series() -> None:
    got = samples(Exposition(EMPTY, DhcpCollector(lambda: None)))
    assert not any(name.startswith("provisioner_dhcp") for name, _ in got)


def test_nodes_by_state_shows_every_state() -> None:
    got = samples(Exposition(EMPTY, NodesCollector(lambda: ["ready", "ready", "failed"])))
    assert got[("provisioner_nodes", (("state", "ready"),))] == 2
    assert got[("provisioner_nodes", (("state", "failed"),))] == 1
    assert got[("provisioner_nodes", (("state", "provisioning"),))] == 0


@dataclass
class Task:
    name: str
    restarts: int
    down: bool


def test_tasks_restarts_and_liveness() -> None:
    tasks = [Task("retention", 0, False), Task("lifecycle sweeper", 3, True)]
    got = samples(Exposition(EMPTY, TasksCollector(lambda: tasks)))
    assert got[("provisioner_task_restarts_total", (("task", "lifecycle sweeper"),))] == 3
    assert got[("provisioner_task_up", (("task", "lifecycle sweeper"),))] == 0
    assert got[("provisioner_task_up", (("task", "retention"),))] == 1


def test_scheduler_queue_depth_counts_pending_jobs() -> None:
    got = samples(Exposition(EMPTY, SchedulerCollector(lambda: ["pending", "pending", "running"],
                                                lambda: ["idle"])))
    assert got[("provisioner_scheduler_queue_depth", ())] == 2
    assert got[("provisioner_scheduler_jobs", (("state", "running"),))] == 1
    assert got[("provisioner_scheduler_nodes", (("state", "idle"),))] == 1


BOOT = ["dhcp_offered", "dhcp_acked", "provisioning", "overlay_served", "booted", "ready"]


def test_a_boot_in_order_observes_each_stage_once_and_the_whole_boot() -> None:
    tracker = BootStages()
    before = {s: shared("provisioner_boot_stage_seconds_count", stage=s)
              for s in ("dhcp", "script", "kernel_image", "callback", "handoff", "ready")}
    sums = shared("provisioner_boot_stage_seconds_sum", stage="ready")
    for at, kind in enumerate(BOOT):
        tracker.recorded("52:54:00:00:00:01", kind, 100.0 + at)
    for stage, count in before.items():
        assert shared("provisioner_boot_stage_seconds_count", stage=stage) == count + 1
    assert shared("provisioner_boot_stage_seconds_sum", stage="ready") == sums + 5.0
    assert len(tracker) == 0  # forgotten once ready


def test_ipxe_dhcp_after_the_pxe_rom_keeps_the_boot_start() -> None:
    tracker = BootStages()
    sums = shared("provisioner_boot_stage_seconds_sum", stage="ready")
    kinds = ["dhcp_offered", "dhcp_acked", "dhcp_offered", *BOOT[1:]]
    for at, kind in enumerate(kinds):
        tracker.recorded("52:54:00:00:00:02", kind, float(at))
    assert shared("provisioner_boot_stage_seconds_sum", stage="ready") == sums + 7.0


def test_events_out_of_order_are_not_stages() -> None:
    tracker = BootStages()
    before = shared("provisioner_boot_stage_seconds_count", stage="dhcp")
    script = shared("provisioner_boot_stage_seconds_count", stage="script")
    tracker.recorded("52:54:00:00:00:03", "dhcp_acked", 1.0)  # a renewal: no offer before
    tracker.recorded("52:54:00:00:00:03", "provisioning", 2.0)
    assert shared("provisioner_boot_stage_seconds_count", stage="dhcp") == before
    assert shared("provisioner_boot_stage_seconds_count", stage="script") == script


def test_the_tracker_is_bounded() -> None:
    tracker = BootStages(max_nodes=10)
    for n in range(50):
        tracker.recorded(f"mac{n}", "dhcp_offered", 0.0)
    assert len(tracker) == 10
    tracker.recorded("mac49", "failed", 1.0)
    assert len(tracker) == 9


def test_file_kinds_are_a_fixed_set() -> None:
    kinds = hooks.HTTP_KINDS
    assert hooks.kind_of("/boot/52:54:00:00:00:01.ipxe", kinds) == "script"
    assert hooks.kind_of("/images/compute/3/vmlinuz", kinds) == "kernel"
    assert hooks.kind_of("/images/compute/3/image.cpio.xz", kinds) == "image"
    assert hooks.kind_of("/boot/nodes/52:54:00:00:00:01/overlay.cpio.xz", kinds) == "overlay"
    assert hooks.kind_of("/anything/a-client-chose", kinds) == "other"
    assert hooks.kind_of("undionly.kpxe", hooks.TFTP_KINDS) == "ipxe"


async def test_the_timed_store_observes_each_operation_by_backend_and_op() -> None:
    store = TimedStore(MemoryStore())
    before = shared("provisioner_store_op_seconds_count", backend="memory", op="put")
    gets = shared("provisioner_store_op_seconds_count", backend="memory", op="get")
    await store.put("/a", b"1")
    await store.get("/a")
    await store.get("/missing")
    assert shared("provisioner_store_op_seconds_count", backend="memory", op="put") == before + 1
    assert shared("provisioner_store_op_seconds_count", backend="memory", op="get") == gets + 2


async def test_the_scheduler_observes_a_handoff_at_the_agent_s_first_poll() -> None:
    clock = [1000.0]
    state = SchedulerState(MemoryStore(), clock=lambda: clock[0])
    await state.load()

    def handoffs() -> float:
        return SCHEDULER.get_sample_value("provisioner_scheduler_handoff_seconds_count") or 0.0

    before = handoffs()
    await state.register("n1", cpus=1, memory_mib=64, agent_hash="0" * 64)
    await state.register("n2", cpus=1, memory_mib=64)  # by hand: no boot, no handoff
    clock[0] += 7.0
    await state.poll("n1")
    await state.poll("n1")  # only the first poll after the handoff
    await state.poll("n2")
    assert handoffs() == before + 1
    assert state.handed == {}


def test_without_our_dhcp_the_stages_after_the_script_still_count() -> None:
    tracker = BootStages()
    kernel = shared("provisioner_boot_stage_seconds_count", stage="kernel_image")
    handoff = shared("provisioner_boot_stage_seconds_count", stage="handoff")
    ready = shared("provisioner_boot_stage_seconds_count", stage="ready")
    for at, kind in enumerate(BOOT[2:]):
        tracker.recorded("52:54:00:00:00:04", kind, float(at))
    assert shared("provisioner_boot_stage_seconds_count", stage="kernel_image") == kernel + 1
    assert shared("provisioner_boot_stage_seconds_count", stage="handoff") == handoff + 1
    assert shared("provisioner_boot_stage_seconds_count", stage="ready") == ready
