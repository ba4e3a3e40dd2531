"""Handing booted nodes to a scheduler: our own (builtin) or Slurm, through a durable outbox."""

from __future__ import annotations

from provisioner.config import Settings
from provisioner.errors import ConfigError
from provisioner.handoff.base import Handoff, HandoffNode, NoHandoff

KINDS = ("builtin", "slurm", "none")


def open_handoff(settings: Settings) -> Handoff:
    """The handoff `[handoff] kind` names, configured from the settings."""
    kind = settings.handoff.kind
    if kind == "builtin":
        from provisioner.handoff.builtin import BuiltinHandoff

        return BuiltinHandoff(settings.scheduler.client_url, timeout=settings.handoff.timeout,
                              token=settings.scheduler.token)
    if kind == "slurm":
        from provisioner.handoff.slurm import SlurmHandoff

        h = settings.handoff
        return SlurmHandoff(h.scontrol, timeout=h.timeout, partition=h.partition,
                            env={"SLURM_CONF": h.slurm_conf} if h.slurm_conf else None)
    if kind == "none":
        return NoHandoff()
    raise ConfigError(f"handoff.kind: {kind!r} is not one of {', '.join(KINDS)}")


__all__ = ["Handoff", "HandoffNode", "open_handoff"]
