"""`lab up --heads` and `lab kill-head` refuse what cannot work in one line, before touching
anything (the lab itself with two heads: tests/e2e/test_ha.py)."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli import Cli


def test_several_heads_need_the_etcd_store(tmp_path: Path) -> None:
    error = Cli(tmp_path)("lab", "up", "--heads", "2", "--nodes", "0", code=2)
    assert "--store etcd" in error


def test_kill_head_without_a_lab_says_so(tmp_path: Path) -> None:
    error = Cli(tmp_path)("lab", "kill-head", "head1", code=2)
    assert "no lab is up" in error
