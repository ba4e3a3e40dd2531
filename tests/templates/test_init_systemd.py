"""/init of an image whose init is systemd (the builder shipped provisioner-booted.service):
it reports init-started, neither calls back nor starts the agent itself, and `/init booted`
(the unit's command) does the callback and keeps the agent's credential root-only. Run for
real with busybox sh and wget against a local HTTP server."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from tests.templates.test_init_agent_token import appliance
from tests.templates.test_init_script import Callback, init_dir, run_lib

__all__ = ["appliance", "init_dir"]  # the fixtures, shared with the other /init tests

ENV = {"PROVISIONER_MAC": "52:54:00:00:00:01", "PROVISIONER_TOKEN": "tok-abc",
       "PROVISIONER_IMAGE": "debian", "PROVISIONER_IMAGE_VERSION": "2"}


def test_init_started_is_posted_beside_the_callback_url(init_dir: Path) -> None:
    with Callback([200]) as server:
        result = run_lib(init_dir, "post_init_started",
                         {**ENV, "PROVISIONER_CALLBACK_URL": server.url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "init-started reported" in result.stdout
    assert server.paths == ["/node/v1/init-started"]
    _, body = server.requests[0]
    assert body == {"mac": ENV["PROVISIONER_MAC"], "token": "tok-abc", "image": "debian",
                    "version": "2"}


def test_init_started_failures_are_bounded_and_not_fatal(init_dir: Path) -> None:
    with Callback([500]) as server:
        result = run_lib(init_dir, "post_init_started",
                         {**ENV, "PROVISIONER_CALLBACK_URL": server.url}, timeout=60)
    assert result.returncode == 1 and len(server.paths) == 3
    assert "attempt 3 of 3" in result.stdout


def test_the_units_take_the_callback_and_the_agent_when_shipped(init_dir: Path,
                                                               tmp_path: Path) -> None:
    unit = tmp_path / "provisioner-booted.service"
    assert run_lib(init_dir, "uses_units",
                   {"PROVISIONER_BOOTED_UNIT": str(unit)}).returncode == 1
    unit.write_text("[Unit]\n")
    assert run_lib(init_dir, "uses_units",
                   {"PROVISIONER_BOOTED_UNIT": str(unit)}).returncode == 0


def test_init_booted_calls_back_and_saves_the_credential_root_only(
        init_dir: Path, tmp_path: Path, appliance: tuple[str, str]) -> None:
    url, credential = appliance
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "node.env").write_text("".join(f"{k}={v}\n" for k, v in ENV.items())
                                  + f"PROVISIONER_CALLBACK_URL={url}\n")
    token_file = tmp_path / "run" / "agent.token"
    # The unit's own command line: `/init booted` (not PID 1).
    result = subprocess.run(
        ["busybox", "sh", "./init", "booted"], cwd=init_dir, capture_output=True, text=True,
        timeout=60, check=False, env={"PATH": "/usr/bin:/bin", "PROV_ETC": str(etc),
                                      "PROVISIONER_AGENT_TOKEN_FILE": str(token_file)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "callback accepted" in result.stdout and credential not in result.stdout
    assert token_file.read_text() == credential + "\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.stat().st_uid == 0


def test_init_booted_without_the_overlay_says_so(init_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(["busybox", "sh", "./init", "booted"], cwd=init_dir,
                            capture_output=True, text=True, timeout=30, check=False,
                            env={"PATH": "/usr/bin:/bin", "PROV_ETC": str(tmp_path)})
    assert result.returncode == 1
    assert "no " + str(tmp_path / "node.env") in result.stdout
