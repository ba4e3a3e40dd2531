"""open_handoff: the [handoff] settings pick and configure the handoff."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.config import load_settings
from provisioner.errors import ConfigError
from provisioner.handoff import open_handoff
from provisioner.handoff.base import NoHandoff
from provisioner.handoff.builtin import BuiltinHandoff
from provisioner.handoff.slurm import SlurmHandoff


async def test_builtin_uses_the_scheduler_url(tmp_path: Path) -> None:
    s = load_settings(None, {"PROVISIONER_DATA_DIR": str(tmp_path),
                             "PROVISIONER_SCHEDULER_LISTEN": "0.0.0.0",
                             "PROVISIONER_SCHEDULER_PORT": "9999"})
    handoff = open_handoff(s)
    assert isinstance(handoff, BuiltinHandoff) and handoff.url == "http://127.0.0.1:9999"
    await handoff.close()
    s = load_settings(None, {"PROVISIONER_SCHEDULER_URL": "http://sched:1/"})
    handoff = open_handoff(s)
    assert isinstance(handoff, BuiltinHandoff) and handoff.url == "http://sched:1"
    await handoff.close()


def test_slurm_and_none(tmp_path: Path) -> None:
    s = load_settings(None, {"PROVISIONER_HANDOFF_KIND": "slurm",
                             "PROVISIONER_HANDOFF_SLURM_CONF": "/etc/slurm/x.conf",
                             "PROVISIONER_HANDOFF_PARTITION": "batch"})
    slurm = open_handoff(s)
    assert isinstance(slurm, SlurmHandoff)
    assert (slurm.env, slurm.partition) == ({"SLURM_CONF": "/etc/slurm/x.conf"}, "batch")
    assert isinstance(open_handoff(load_settings(None, {"PROVISIONER_HANDOFF_KIND": "none"})),
                      NoHandoff)
    with pytest.raises(ConfigError, match="builtin, slurm, none"):
        open_handoff(load_settings(None, {"PROVISIONER_HANDOFF_KIND": "pbs"}))
