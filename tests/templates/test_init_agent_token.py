"""The image's /init keeps the node agent's credential from the boot callback's answer: in a
root-only file, never on the console. Run for real with busybox sh and wget against a local
HTTP server answering as POST /node/v1/booted does."""

from __future__ import annotations

import json
import secrets
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.templates.test_init_script import init_dir, run_lib

__all__ = ["init_dir"]  # the fixture, shared with the other /init tests


@pytest.fixture
def appliance() -> Iterator[tuple[str, str]]:
    """A callback URL whose 200 answer carries a fresh agent credential, and that credential."""
    credential = secrets.token_urlsafe(32)
    answer = json.dumps({"state": "booted", "node": "node001", "mac": "52:54:00:00:00:01",
                         "agent_token": credential}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/node/v1/booted", credential
    finally:
        server.shutdown()
        server.server_close()


def test_the_callback_saves_the_agent_credential_root_only(
        init_dir: Path, tmp_path: Path, appliance: tuple[str, str]) -> None:
    url, credential = appliance
    token_file = tmp_path / "run" / "agent.token"
    result = run_lib(init_dir, "post_callback", {
        "PROVISIONER_MAC": "52:54:00:00:00:01", "PROVISIONER_TOKEN": "tok",
        "PROVISIONER_CALLBACK_URL": url, "PROVISIONER_AGENT_TOKEN_FILE": str(token_file)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "callback accepted" in result.stdout and "agent credential saved" in result.stdout
    assert token_file.read_text() == credential + "\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert credential not in result.stdout + result.stderr


def test_an_answer_without_a_credential_saves_nothing(init_dir: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "agent.token"
    result = run_lib(init_dir, """save_agent_token '{"state": "ready", "agent_token": ""}'""",
                     {"PROVISIONER_AGENT_TOKEN_FILE": str(token_file)})
    assert result.returncode == 0
    assert "no agent credential" in result.stdout and not token_file.exists()

