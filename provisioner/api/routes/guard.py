"""Checks the node routes share beyond the route's own role: who may change a node's power
settings, and whether its effective power settings are safe to use.

Why power_* needs the admin role although an operator may change nodes: whoever sets
`power_address` chooses where the appliance sends the BMC user and password (Redfish basic
auth, IPMI), so an operator could point a node at a host of their own and read the password.
"""

from __future__ import annotations

from collections.abc import Mapping

from provisioner.api.auth import Principal
from provisioner.api.context import ApiContext
from provisioner.errors import Forbidden
from provisioner.nodes.model import Node, SettingValue, check_power, setting_values
from provisioner.security.tokens import Role

POWER_PREFIX = "power_"


def power_changes(before: Mapping[str, SettingValue],
                  after: Mapping[str, SettingValue]) -> list[str]:
    """The power_* settings that differ between two setting maps (added, removed, changed)."""
    return sorted(k for k in set(before) | set(after)
                  if k.startswith(POWER_PREFIX) and before.get(k) != after.get(k))


async def admin_for_power(ctx: ApiContext, who: Principal, action: str, target: str, *,
                          before: Mapping[str, SettingValue],
                          after: Mapping[str, SettingValue]) -> None:
    """403 (and an audit entry) when a role below admin changes a power_* setting."""
    touched = power_changes(before, after)
    if not touched or who.role >= Role.ADMIN:
        return
    await ctx.audit.record(who.who, action, target, "denied", ctx.clock(),
                           detail={"reason": "power settings need admin", "settings": touched})
    raise Forbidden(f"changing {', '.join(touched)} needs the admin role and this token is "
                    f"{who.role.label}; ask an admin, or use a token created with --role admin")


async def safe_power(ctx: ApiContext, node: Node) -> None:
    """422 when the node's effective settings would send the BMC password over plain http."""
    check_power(setting_values(await ctx.inventory.effective(node, ctx.settings.defaults)))
