"""A rolling reimage run by the appliance survives the appliance: stopped in the middle of a
wave, the next Appliance on the same sqlite store takes it up (nodes/resume.py, a supervised
task) at that wave, and every node ends on the new image with no wave redone. The nodes'
power is the manual driver (it only says what to do); the test plays each node, booting it
through the real lifecycle once it has been set reimaging."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from provisioner.config import Settings, load_settings
from provisioner.handoff.base import NoHandoff
from provisioner.nodes.model import MacAddress, Node, NodeState
from provisioner.nodes.progress import load_status
from provisioner.nodes.resume import power_opener
from provisioner.nodes.rollout import Rollout, RolloutRequest
from provisioner.service import Appliance
from tests.support.waiting import eventually

S = NodeState
NAMES = ("n1", "n2", "n3")


def _settings(tmp_path: Path) -> Settings:
    return load_settings(env={
        "PROVISIONER_DATA_DIR": str(tmp_path), "PROVISIONER_STORE_BACKEND": "sqlite",
        "PROVISIONER_TFTP_ENABLED": "false", "PROVISIONER_DHCP_MODE": "off",
        "PROVISIONER_BOOT_LISTEN": "127.0.0.1", "PROVISIONER_BOOT_PORT": "0",
        "PROVISIONER_HANDOFF_KIND": "none"})


async def _play_nodes(appliance: Appliance, booted: list[str], hold: set[str]) -> None:
    """Each node set reimaging (and not held) boots version 2 and calls back."""
    while True:
        for name in NAMES:
            node = (await appliance.inventory.get_node(name)).value
            if node.state is S.REIMAGING and name not in hold:
                await appliance.lifecycle.boot_script_served(node.mac, "compute", "2")
                await appliance.lifecycle.booted(node.mac, {"cpus": 1}, "2", image="compute")
                booted.append(name)
        await asyncio.sleep(0.02)


async def _stopped_mid_wave(settings: Settings, booted: list[str], mac_byte: int) -> str:
    """Start an appliance, a rollout of NAMES to compute:2 on it (one node a wave), play the
    nodes with n2 held, and stop the appliance once n2 is power-cycled and waiting: the
    rollout is left mid-wave in the store. Returns its id."""
    async with contextlib.AsyncExitStack() as stack:
        first = Appliance(settings)
        await first.start(stack)
        for index, name in enumerate(NAMES, 1):
            await first.inventory.add_node(Node(
                MacAddress(f"52:54:00:00:{mac_byte:02x}:{index:02x}"), name, image="compute:1",
                state=S.READY, settings={"power_driver": "manual"}))
        rollout = Rollout(first.inventory, first.lifecycle, NoHandoff(),
                          power_opener(settings, first.inventory), poll=0.02, resumable=True)
        request = RolloutRequest(nodes=NAMES, image="compute:2", version="2", wave=1,
                                 timeout=60.0)
        rollout_id = (await rollout.start(request)).id
        runner = first.supervisor.spawn("reimage", lambda: rollout.execute(request))
        stack.push_async_callback(runner.stop)
        player = asyncio.create_task(_play_nodes(first, booted, hold={"n2"}))
        try:
            await eventually(lambda: _waiting(first, rollout_id, "n2"), "n2 power-cycled")
        finally:
            player.cancel()
        return rollout_id  # the appliance stops here, while n2 is down for its reimage


async def test_the_next_appliance_resumes_a_rollout_at_its_wave(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    booted: list[str] = []
    rollout_id = await _stopped_mid_wave(settings, booted, 0x02)
    async with contextlib.AsyncExitStack() as stack:
        second = Appliance(settings)
        await second.start(stack)  # its "reimage resume" task takes the rollout up
        player = asyncio.create_task(_play_nodes(second, booted, hold=set()))
        try:
            await eventually(lambda: _state_is(second, rollout_id, "succeeded"),
                             "the resumed rollout to succeed", timeout=30)
        finally:
            player.cancel()
        for name in NAMES:
            node = (await second.inventory.get_node(name)).value
            assert (node.state, node.image) == (S.READY, "compute:2")
        assert booted == ["n1", "n2", "n3"]  # each booted once: no wave redone
        saved = await load_status(second.inventory, rollout_id)
        assert saved.waves_done == 3


async def _waiting(appliance: Appliance, rollout_id: str, name: str) -> bool:
    saved = await load_status(appliance.inventory, rollout_id)
    return saved.nodes[name].step == "waiting_callback"


async def _state_is(appliance: Appliance, rollout_id: str, state: str) -> bool:
    return (await load_status(appliance.inventory, rollout_id)).state == state


async def test_a_running_appliance_takes_up_a_rollout_whose_runner_stops_later(
        tmp_path: Path) -> None:
    """The keeper was started (and had found nothing to resume) before the rollout began on
    another appliance of the same store; that one stops mid-wave: the keeper's resume task,
    which keeps looking, takes the rollout up (with several heads: the leader takes up a
    rollout that another head's API started, when that head dies)."""
    settings = _settings(tmp_path)
    booted: list[str] = []
    async with contextlib.AsyncExitStack() as keeper_stack:
        keeper = Appliance(settings)
        await keeper.start(keeper_stack)
        rollout_id = await _stopped_mid_wave(settings, booted, 0x03)
        player = asyncio.create_task(_play_nodes(keeper, booted, hold=set()))
        try:
            await eventually(lambda: _state_is(keeper, rollout_id, "succeeded"),
                             "the keeper to take the rollout up", timeout=60)
        finally:
            player.cancel()
        assert booted == ["n1", "n2", "n3"]  # each booted once: no wave redone
