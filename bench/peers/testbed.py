"""Where a benchmark runs its servers and clients: a server namespace and a client namespace
joined by a veth (provisioner/lab/netns.py), or the loopback.

    with testbed.unwinding(), testbed.Testbed.create() as bed:
        proc = bed.spawn_server(["in.tftpd", ...], work / "tftpd.log")
        subprocess.run(bed.client(["atftp", ...]), timeout=60)

The namespace names are random (`pv-XXXXXX-s` / `-c`), so concurrent benchmarks and tests
cannot tear each other's down. `close()` stops every process the bed started, by PID (each in
its own session, so its children go too), then deletes both namespaces by name; the bed also
closes at interpreter exit. `unwinding()` turns SIGTERM and SIGHUP into KeyboardInterrupt, so the
`finally` blocks and `with` exits run as they do on Ctrl-C, and ends an interrupted benchmark
with one line and status 130.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from provisioner.lab.netns import NetnsPair, stop_process

__all__ = ["Testbed", "stop_process", "unwinding"]


@contextlib.contextmanager
def unwinding() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt while the block runs; an interrupt (those or
    Ctrl-C) ends the block's `with` exits and `finally` clauses first, then the program with one
    line and status 130 instead of a traceback."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}): the benchmark's processes were stopped and its "
              "namespaces removed", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Testbed:
    """Servers on one side, clients on the other; every process started here is stopped by
    close(). `pair` is None on loopback: servers and clients then share 127.0.0.1."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, pair: NetnsPair | None) -> None:
        self.pair = pair
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False
        atexit.register(self.close)

    @classmethod
    def create(cls, *, loopback: bool = False, subnet: str | None = None) -> Testbed:
        return cls(None if loopback else NetnsPair.create(subnet=subnet))

    # -- addresses ---------------------------------------------------------------------------

    @property
    def server_ip(self) -> str:
        return "127.0.0.1" if self.pair is None else str(self.pair.server_ip)

    @property
    def client_ip(self) -> str:
        return "127.0.0.1" if self.pair is None else str(self.pair.client_ip)

    @property
    def server_if(self) -> str:
        return "lo" if self.pair is None else self.pair.server_if

    @property
    def client_if(self) -> str:
        return "lo" if self.pair is None else self.pair.client_if

    def describe(self) -> str:
        if self.pair is None:
            return "loopback (127.0.0.1), servers and clients in the root namespace"
        return (f"namespaces {self.pair.server_ns} (servers, {self.pair.server_ip}) and "
                f"{self.pair.client_ns} (clients, {self.pair.client_ip}) joined by a veth")

    def add_server_address(self, offset: int) -> str:
        """Another address on the server's veth (server address + offset), for a second server
        on the same port."""
        if self.pair is None:
            return f"127.0.0.{1 + offset}"
        ip = str(self.pair.server_ip + offset)
        subprocess.run(["ip", "-n", self.pair.server_ns, "addr", "add",
                        f"{ip}/{self.pair.network.prefixlen}", "dev", self.pair.server_if],
                       check=True, capture_output=True, timeout=30)
        return ip

    # -- commands ----------------------------------------------------------------------------

    def client(self, argv: Sequence[str]) -> list[str]:
        """argv run on the client side."""
        return list(argv) if self.pair is None else self.pair.command(self.pair.client_ns, argv)

    def server_side(self, argv: Sequence[str]) -> list[str]:
        """argv run on the server side (probes of servers that listen on its loopback)."""
        return list(argv) if self.pair is None else self.pair.command(self.pair.server_ns, argv)

    def spawn_server(self, argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
                     cwd: Path | None = None) -> subprocess.Popen[Any]:
        """Start a long-running process on the server side, in its own session; output to
        `log`. close() stops it by PID."""
        with log.open("ab") as out:
            proc = subprocess.Popen(self.server_side(argv), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any]) -> None:
        """SIGTERM to the process's session, SIGKILL after 10 s; by PID."""
        stop_process(proc)
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self._procs):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                stop_process(proc)
        self._procs.clear()
        if self.pair is not None:
            self.pair.close()  # deletes both namespaces by name (the veth goes with them)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
