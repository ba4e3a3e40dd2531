"""`provisioner node power NODE on|off|cycle|soft-off|status`."""

from __future__ import annotations

import time

import typer

from provisioner.cli.audit import AdminChange, audited, local_who
from provisioner.cli.common import JSON_OPTION, print_json, state, with_inventory
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import setting_values
from provisioner.nodes.retries import power_cycled
from provisioner.power.base import PowerAction, PowerState, power_action, wait_for_state
from provisioner.power.registry import open_power

WANTED = {PowerAction.ON: PowerState.ON, PowerAction.CYCLE: PowerState.ON,
          PowerAction.OFF: PowerState.OFF, PowerAction.SOFT_OFF: PowerState.OFF}


def power(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Node name or MAC address.", show_default=False),
    action: PowerAction = typer.Argument(..., help="on, off (hard), cycle (hard reset), "
                                         "soft-off (ACPI shutdown) or status.",
                                         show_default=False),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait until the machine reaches "
                               "the state asked for (BMCs apply changes after answering)."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the BMC."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Power a node on, off or through a cycle, or show its power state, with the driver its
    settings name (power_driver, power_address, power_user, power_password)."""
    defaults = state(ctx).settings.defaults

    async def act(inv: Inventory, change: AdminChange | None = None) -> tuple[str, str, PowerState]:
        node = (await inv.get_node(ref)).value
        if change is not None:
            change.target, change.detail["name"] = node.mac.value, node.name
        effective = await inv.effective(node, defaults)
        driver = open_power(setting_values(effective), node=node.name, timeout=timeout,
                            notify=lambda text: typer.echo(text, err=True))
        result = await power_action(driver, action)
        if action is PowerAction.CYCLE:  # its boot is watched from now on (nodes/retries.py)
            await inv.add_event(power_cycled(node.mac, time.time(), by=local_who()))
        want = WANTED.get(action)
        if wait > 0 and want is not None and result is not PowerState.UNKNOWN:
            result = await wait_for_state(driver, want, timeout=wait)
        return node.name, driver.kind, result

    # A status read changes nothing: the API does not audit it either.
    name, kind, result = with_inventory(ctx, act) if action is PowerAction.STATUS \
        else audited(ctx, AdminChange(f"power.{action.value}", ref), act)
    if as_json:
        print_json({"node": name, "driver": kind, "action": action.value, "power": result.value})
    elif action is PowerAction.STATUS:
        typer.echo(f"{name}: {result.value}")
    else:
        typer.echo(f"{name}: {action.value} sent ({kind}); power is now {result.value}")

