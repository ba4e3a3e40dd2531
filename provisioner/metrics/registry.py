"""Every metric the appliance and the scheduler update as things happen, defined once, in
the registry of the process that updates it (the refusals counter is in both).

The hooks (hooks.py, stages.py) update them; they live as long as the process.
What is read from existing state at scrape time (DHCP counters, nodes by state, background
tasks, the scheduler's queue) is not here but in collectors.py, so nothing is counted twice.
Labels take values from small fixed sets (stages, file kinds, reasons, backends, operations):
never a MAC, an address or a name a client chose, so the series stay few however many nodes
boot.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

# No `*_created` series: a series per metric and label set that no query of ours reads.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: what the appliance's hooks update; its exposition adds its scrape-time collectors to these
APPLIANCE: Final = CollectorRegistry(auto_describe=True)
#: the same for the scheduler service, a process of its own
SCHEDULER: Final = CollectorRegistry(auto_describe=True)

#: seconds, from sub-second DHCP exchanges to image downloads and handoffs of many minutes
BOOT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
                       300.0, 600.0, 1800.0)
#: seconds, a store operation: sub-millisecond (memory, sqlite reads) to etcd's timeout
STORE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0, 2.5, 5.0)

BOOT_STAGE: Final = Histogram(
    "provisioner_boot_stage_seconds",
    "Seconds a boot spent in each stage: dhcp (offer to ack), script (ack to the iPXE script), "
    "kernel_image (script to the overlay the booted init fetches), callback (overlay to the "
    "boot callback), handoff (callback to ready); stage ready is the whole boot, offer to "
    "ready", ["stage"], buckets=BOOT_BUCKETS, registry=APPLIANCE)
TFTP_TRANSFERS: Final = Counter(
    "provisioner_tftp_transfers_total", "TFTP read transfers that ended, by file kind and result",
    ["kind", "result"], registry=APPLIANCE)
TFTP_BYTES: Final = Counter(
    "provisioner_tftp_bytes_total", "Bytes sent in TFTP transfers, by file kind", ["kind"],
    registry=APPLIANCE)
HTTP_TRANSFERS: Final = Counter(
    "provisioner_http_transfers_total",
    "Boot plane (HTTP) answers with a file or a rendered file, by kind and status class",
    ["kind", "status"], registry=APPLIANCE)
HTTP_BYTES: Final = Counter(
    "provisioner_http_bytes_total", "Bytes of files sent by the boot plane (HTTP), by kind",
    ["kind"], registry=APPLIANCE)
REFUSED: Final = Counter(
    "provisioner_refused_total",
    "Requests refused: boot plane bindings and connection caps, API and scheduler "
    "authentication, /metrics, DHCP rate limits; by plane and reason", ["plane", "reason"],
    registry=APPLIANCE)
STORE_OP: Final = Histogram(
    "provisioner_store_op_seconds", "Seconds a store operation took, by backend and operation",
    ["backend", "op"], buckets=STORE_BUCKETS, registry=APPLIANCE)
HANDOFF_READY: Final = Histogram(
    "provisioner_scheduler_handoff_seconds",
    "Seconds from a node's handoff to the scheduler (its registration) to its agent's first "
    "poll", buckets=BOOT_BUCKETS, registry=SCHEDULER)
SCHEDULER.register(REFUSED)  # its token and agent credential refusals
