"""`provisioner lab ...`: a QEMU lab on this machine (a network namespace, the appliance, the
scheduler and N PXE-booting nodes), for trying provisioner out and for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import typer

from provisioner.cli.common import print_fields, print_json, print_table, state
from provisioner.errors import ConfigError, ValidationError

app = typer.Typer(help="A QEMU lab: PXE-boot nodes from the appliance in a network namespace.",
                  no_args_is_help=True)


def _root(ctx: typer.Context) -> Path:
    return state(ctx).target.lab_root


def _namespace() -> str:
    from provisioner.lab.netns import DEFAULT_NAMESPACE

    return os.environ.get("PROVISIONER_LAB_NAMESPACE", DEFAULT_NAMESPACE)


@app.command("up")
def up(
    ctx: typer.Context,
    nodes: int = typer.Option(1, "--nodes", "-n", min=0, max=32, help="QEMU nodes to boot."),
    firmware: str = typer.Option("bios", "--firmware", help="bios, uefi or mixed."),
    store: str = typer.Option("sqlite", "--store", help="sqlite (embedded) or etcd."),
    heads: int = typer.Option(1, "--heads", min=1, max=3, help="Appliances on the bridge, "
                              "each on its own address (more than one: --store etcd, a "
                              "3-member etcd cluster)."),
    discover: bool = typer.Option(False, "--discover", help="Leave the MACs unknown: the "
                                  "nodes are discovered by DHCP (default: registered first)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Show progress until ready."),
    accel: str = typer.Option("tcg", "--accel", help="tcg, or kvm where KVM works (it does "
                              "not on every host: QEMU may fail or hang)."),
) -> None:
    """Bring the lab up and boot the nodes; shows each node's progress until it is ready."""
    from provisioner.lab.images import builder_available, ensure_image
    from provisioner.lab.lab import Lab
    from provisioner.lab.labconfig import LabOptions
    from provisioner.lab.observe import LabBootError, console_offset, wait_ready
    from provisioner.lab.qemu import firmware_for

    if firmware not in ("bios", "uefi", "mixed"):
        raise ValidationError("--firmware", f"{firmware!r} is not bios, uefi or mixed")
    if store not in ("sqlite", "etcd"):
        raise ValidationError("--store", f"{store!r} is not sqlite or etcd")
    if accel not in ("tcg", "kvm"):
        raise ValidationError("--accel", f"{accel!r} is not tcg or kvm")
    if heads > 1 and store != "etcd":
        raise ValidationError("--heads", "several heads share one store: add --store etcd")
    root = _root(ctx)
    cache = state(ctx).settings.cache_dir
    options = LabOptions(root, namespace=_namespace(), store=store, cache=cache,
                         discovery=True, heads=heads)
    lab = Lab.create(options, say=typer.echo)
    if builder_available(lab):
        ensure_image(lab, options, say=typer.echo)
    else:
        typer.echo("lab: no image builder yet: nodes will stop after DHCP and the first stage")
    started = []
    for index in range(1, nodes + 1):
        node = lab.new_node(firmware_for(index, firmware), memory_mib=options.memory_mib,
                            accel=accel)
        if not discover:
            lab.register(node)
        offset = console_offset(node)
        lab.start_node(node)
        started.append((node, offset))
        typer.echo(f"lab: started {node.qemu.name} ({node.qemu.firmware}, {node.qemu.mac}), "
                   f"console {node.qemu.console}")
    _print_access(lab)
    if wait and started:
        began = time.monotonic()
        try:
            wait_ready(lab, [n for n, _ in started], say=lambda line: typer.echo(f"  {line}"),
                       offsets={n.qemu.mac: o for n, o in started})
        except LabBootError:
            typer.echo("lab: the lab stays up for a look (`provisioner lab status`, "
                       "`provisioner lab console NODE`); `provisioner lab down` ends it", err=True)
            raise
        typer.echo(f"lab: all {len(started)} node(s) ready in {time.monotonic() - began:.0f} s")
        if discover:
            _set_power(lab, [n for n, _ in started])


def _set_power(lab: Any, nodes: list[Any]) -> None:
    """Discovered nodes get their QMP socket as power address once known, so that
    `provisioner node reimage` can power-cycle them too."""
    from provisioner.lab.storeview import snapshot

    views = snapshot(lab, [n.qemu.mac for n in nodes])
    for node in nodes:
        known = views[node.qemu.mac].node
        if known is not None and "power_address" not in known.settings:
            lab.cli("node", "set", known.name, "--set", f"power_address={node.qemu.qmp}")


def _print_access(lab: Any) -> None:
    s = lab.state
    typer.echo(f"lab: API {s.api_url} (token in `provisioner lab status`), "
               f"scheduler {s.scheduler_url}; enter the lab with "
               f"`ip netns exec {s.namespace} bash`")


@app.command("status")
def status(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="JSON.")) -> None:
    """The lab: namespace, addresses, API URL and admin token, and each node's state."""
    from provisioner.lab import procs
    from provisioner.lab.lab import Lab
    from provisioner.lab.storeview import snapshot

    lab = Lab.load(_root(ctx))
    if lab is None:
        raise ConfigError("no lab is up; start one with `provisioner lab up`")
    s = lab.state
    views = snapshot(lab, [n.qemu.mac for n in s.nodes]) if s.nodes else {}
    rows = []
    for node in s.nodes:
        view = views.get(node.qemu.mac)
        known = view.node if view is not None else None
        rows.append({"name": known.name if known else node.qemu.name, "mac": node.qemu.mac,
                     "firmware": node.qemu.firmware,
                     "state": view.state if view is not None else "unknown",
                     "ip": view.ip if view is not None else None,
                     "running": bool(node.proc and procs.alive(node.proc)),
                     "console": str(node.qemu.console), "qmp": str(node.qemu.qmp)})
    services = {p.role: {"pid": p.pid, "running": procs.alive(p), "log": p.log}
                for p in s.procs}
    data = {"namespace": s.namespace, "bridge": s.bridge, "address": s.address,
            "api_url": s.api_url, "boot_url": s.boot_url, "scheduler_url": s.scheduler_url,
            "admin_token": s.admin_token, "scheduler_token": s.scheduler_token,
            "store": s.store, "config": str(s.config),
            "services": services, "nodes": rows}
    lab.ns.close()
    if as_json:
        print_json(data)
        return
    fields: list[tuple[str, object]] = [
        ("namespace", s.namespace), ("bridge", f"{s.bridge} {s.address}"), ("store", s.store),
        ("api", s.api_url), ("admin token", s.admin_token), ("boot", s.boot_url),
        ("scheduler", s.scheduler_url), ("scheduler token", s.scheduler_token),
        ("config", s.config)]
    for role, info in services.items():
        running = "running" if info["running"] else "NOT RUNNING"
        fields.append((f"{role} process", f"pid {info['pid']} {running}, log {info['log']}"))
    print_fields(fields)
    typer.echo("")
    print_table(["name", "mac", "firmware", "state", "ip", "running", "console"],
                [[r["name"], r["mac"], r["firmware"], r["state"], r["ip"],
                  "yes" if r["running"] else "no", r["console"]] for r in rows])


@app.command("console")
def console(ctx: typer.Context, node: str = typer.Argument(..., help="Lab node name or MAC."),
            follow: bool = typer.Option(True, "--follow/--no-follow", help="Keep following.")
            ) -> None:
    """Show a node's serial console log (follows it, like tail -f; Ctrl-C to stop)."""
    from provisioner.lab.lab import Lab

    lab = Lab.load(_root(ctx))
    if lab is None:
        raise ConfigError("no lab is up; start one with `provisioner lab up`")
    path = lab.state.node(node).qemu.console
    argv = ["tail", "-n", "+1", *(["-f"] if follow else []), str(path)]
    raise typer.Exit(subprocess.run(argv, check=False).returncode)


@app.command("kill-head")
def kill_head(ctx: typer.Context,
              name: str = typer.Argument(..., help="head1, head2 ... (`lab status`).")) -> None:
    """SIGKILL one head of the lab, as a crash would (the others take over its work)."""
    from provisioner.lab.lab import Lab

    lab = Lab.load(_root(ctx))
    if lab is None:
        raise ConfigError("no lab is up; start one with `provisioner lab up`")
    proc = lab.kill_head(name)
    typer.echo(f"lab: killed {name} (pid {proc.pid}); its log {proc.log}")


@app.command("down")
def down(ctx: typer.Context) -> None:
    """Stop everything the lab started (by PID) and remove its namespace. Safe to repeat."""
    from provisioner.lab.lab import down as lab_down

    if not lab_down(_root(ctx), _namespace(), say=typer.echo):
        typer.echo("lab: nothing to take down")


@app.command("storm")
def storm(
    ctx: typer.Context,
    nodes: int = typer.Option(100, "--nodes", "-n", min=1, max=20000,
                              help="Simulated nodes booting at once."),
    link: str = typer.Option("", "--link", help="Shape the head node's side to this rate "
                             "(tc syntax: 1gbit, 100mbit); default: unshaped."),
    loss: float = typer.Option(0.0, "--loss", min=0.0, max=50.0,
                               help="Drop this percentage of packets each way."),
    image_size: str = typer.Option("16M", "--image-size", help="Size of the image each node "
                                   "fetches (64M, 512k)."),
    control_only: bool = typer.Option(False, "--control-only", help="Skip the bulk transfers "
                                      "(TFTP, kernel, image): DHCP, script, overlay, callback, "
                                      "poll only."),
    workers: int = typer.Option(4, "--workers", min=1, max=64,
                                help="Client processes the nodes are spread over."),
    timeout: float = typer.Option(900.0, "--timeout", min=10.0,
                                  help="Seconds before the nodes not ready count as failed."),
    as_json: bool = typer.Option(False, "--json", help="The report as JSON."),
) -> None:
    """A boot storm: N simulated nodes (real DHCP, TFTP and HTTP clients, each from its own
    leased address) boot at once from a lab appliance of their own; per-stage latencies, time
    until all are ready, and the head node's CPU and memory. Exits 1 if a node is not ready."""
    from provisioner.lab.storm.appliance import StormOptions, parse_size, terminated_as_interrupt
    from provisioner.lab.storm.appliance import storm as run_storm
    from provisioner.lab.storm.report import render_text

    options = StormOptions(nodes, link, loss, parse_size(image_size), control_only, workers,
                           timeout=timeout)
    root = _root(ctx).with_name("storm")
    say = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo
    with terminated_as_interrupt():
        report = run_storm(options, root, say=say)
    if as_json:
        print_json(report.to_dict())
    else:
        for line in render_text(report):
            typer.echo(line)
    if report.all_ready_seconds is None:
        raise typer.Exit(1)
