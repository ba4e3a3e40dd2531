"""The CLI in-process (typer's CliRunner) on a data dir of its own, with the contract every
command keeps checked on each call: exit code as expected, and a failure is one `error:` line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from typer.testing import CliRunner

from provisioner.cli.main import app


class Cli:
    """`cli("node", "list")` runs `provisioner node list`; `prefix` goes before every command
    (["image"]), `env` adds settings, and stderr lines starting with `progress` (a long
    command's progress, printed before its error) are not counted as the error."""

    def __init__(self, tmp_path: Path, *, prefix: Sequence[str] = (),
                 env: dict[str, str] | None = None, progress: str | None = None) -> None:
        self.data = tmp_path / "data"
        self.env = {"PROVISIONER_DATA_DIR": str(self.data), "PROVISIONER_CONFIG": "",
                    **(env or {})}
        self.prefix = list(prefix)
        self.progress = progress
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> str:
        result = self.runner.invoke(app, [*self.prefix, *args], env=self.env)
        assert result.exit_code == code, (args, result.output, result.stderr)
        if code:
            lines = [line for line in result.stderr.strip().splitlines()
                     if self.progress is None or not line.startswith(self.progress)]
            assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
            return lines[0]
        return result.stdout

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json"))
