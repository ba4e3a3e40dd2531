"""Benchmark of the admin and node planes with 10,000 nodes, on sqlite and on a real etcd.

    .venv/bin/python bench/api.py [--nodes 10000] [--backends sqlite,etcd] [--rate 200]
    .venv/bin/python bench/api.py --nodes 2000 --callbacks 200 --gets 500    # quick

For each backend: the nodes are written to the store, then `provisioner serve` (the real
appliance: uvicorn with httptools, the inventory cache, the lifecycle, the handoff outbox) and
`provisioner scheduler serve` run as child processes on loopback, and this process measures:

- `GET /api/v1/nodes/{mac}` one at a time over a kept-alive connection (target p99 < 10 ms),
  and the peer: nginx (bench/peers/nginx.py) serving the same JSON bodies as static files,
  fetched by the same client over one connection, in alternating chunks with ours, so the
  ratio says what our API costs over the cheapest HTTP answer of that body;
- `GET /api/v1/nodes?limit=500`, every page of the 10,000 (target < 100 ms a page);
- callback-to-ready: `POST /node/v1/booted` sent at a fixed rate (default 200/s) for nodes
  staged as provisioning with one-boot tokens; ready is the `ready` event the appliance writes
  when the scheduler confirmed the registration, so the figure includes the token check, the
  node and event writes, the outbox, the scheduler's REST round trip and the final transition
  (target p99 < 100 ms). Times are the appliance's event timestamps minus the send time
  (one machine, one clock).

etcd (the backend's server) is a throw-away one-member etcd from bench/peers/etcd.py; nginx and
etcd run on 127.0.0.1 and are stopped by PID at the end, also on Ctrl-C or SIGTERM.
Run time is bounded: every wait has a deadline; the whole run takes about a minute per backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ itself is sys.path[0], and bench/http.py would shadow the standard
# library's http package: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import httpx  # noqa: E402

from bench.peers import nginx  # noqa: E402
from bench.peers.etcd import Etcd, free_port  # noqa: E402
from bench.peers.testbed import Testbed, unwinding  # noqa: E402
from provisioner.config import Settings, load_settings  # noqa: E402
from provisioner.inventory.repository import Inventory  # noqa: E402
from provisioner.nodes.model import MacAddress, Node, NodeState  # noqa: E402
from provisioner.security.tokens import ApiTokens, BootTokens, Role  # noqa: E402
from provisioner.store import open_store  # noqa: E402

T = TypeVar("T")
BATCH = 100
START_TIMEOUT = 30.0
READY_TIMEOUT = 60.0
WORKERS = 64  # concurrent callback connections (nodes booting at the same moment)


def mac_of(i: int) -> MacAddress:
    return MacAddress(f"02:00:00:{i >> 16 & 0xff:02x}:{i >> 8 & 0xff:02x}:{i & 0xff:02x}")


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def summary(label: str, seconds: Sequence[float], target_ms: float | None) -> str:
    p50, p99 = statistics.median(seconds) * 1e3, percentile(seconds, 99) * 1e3
    line = (f"  {label:<44} n={len(seconds):<6} median {p50:7.2f} ms  p99 {p99:7.2f} ms  "
            f"max {max(seconds) * 1e3:7.2f} ms")
    if target_ms is None:
        return line
    verdict = "ok" if p99 < target_ms else "OVER TARGET"
    return f"{line}  (target p99 < {target_ms:g} ms: {verdict})"


async def batched(items: Sequence[T], work: Callable[[T], Awaitable[Any]]) -> None:
    for start in range(0, len(items), BATCH):
        await asyncio.gather(*(work(item) for item in items[start:start + BATCH]))


# -- staging ---------------------------------------------------------------------------------


async def stage(settings: Settings, nodes: int, callbacks: int) -> tuple[str, dict[int, str]]:
    """Write the nodes, stage `callbacks` of them as provisioning with one-boot tokens, and
    create an admin token. Returns (bearer token, {node index: boot token})."""
    store = open_store(settings)
    inventory = Inventory(store)
    tokens = BootTokens(store)
    try:
        started = time.perf_counter()
        await batched(range(nodes), lambda i: inventory.add_node(Node(
            mac_of(i), f"n{i:05d}", groups=(), image="compute:1" if i % 2 else None)))
        print(f"  staged {nodes} nodes in {time.perf_counter() - started:.1f} s")
        boot_tokens: dict[int, str] = {}

        async def provisioning(i: int) -> None:
            await inventory.update_node(mac_of(i).value,
                                        lambda n: n.with_changes(state=NodeState.PROVISIONING))
            boot_tokens[i] = await tokens.issue(mac_of(i), 3600, time.time())

        await batched(range(callbacks), provisioning)
        _, bearer = await ApiTokens(store).create(Role.VIEWER, "bench", time.time())
        return bearer, boot_tokens
    finally:
        await store.close()


# -- the child processes ---------------------------------------------------------------------


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # BENCH_PROFILE=FILE runs the appliance under cProfile (for finding where time goes)
    profile = os.environ.get("BENCH_PROFILE") if args[0] == "serve" else None
    prefix = ["-m", "cProfile", "-o", profile] if profile else []
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *prefix, "-m", "provisioner", *args],
                                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{url}: the process ended: {log.read_text()[-2000:]}")
            try:
                await client.get(url)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {START_TIMEOUT:g} s; see {log}")


# -- a lean HTTP/1.1 client ------------------------------------------------------------------


class RawHttp:
    """One kept-alive HTTP/1.1 connection over asyncio streams. httpx costs about a
    millisecond of CPU a request and its pool slows down with hundreds of connections; on two
    shared cores that would be measured as server latency."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.extra}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        writer.write(head.encode() + body)
        status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        length = next((int(line.split(":", 1)[1]) for line in lines
                       if line.lower().startswith("content-length:")), 0)
        return int(status_line.split()[1]), await reader.readexactly(length)

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


# -- measurements ----------------------------------------------------------------------------


async def measure_gets(api: RawHttp, macs: Sequence[str], count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        mac = random.choice(macs)
        started = time.perf_counter()
        status, body = await api.request("GET", f"/api/v1/nodes/{mac}")
        latencies.append(time.perf_counter() - started)
        assert status == 200, body
    return latencies


async def gets_against_nginx(api: RawHttp, bed: Testbed, work: Path, nodes: int,
                             count: int) -> None:
    """Ours and nginx serving the same bodies as files, over one kept-alive connection each,
    the same MACs, in four alternating chunks; prints both and the ratio."""
    macs = [mac_of(i).value for i in random.sample(range(nodes), min(nodes, 500))]
    work.chmod(0o755)  # nginx's worker process is not root: it must reach the files
    root = work / "static"
    (root / "api" / "v1" / "nodes").mkdir(parents=True)
    for mac in macs:  # untimed: our answer becomes nginx's file
        status, body = await api.request("GET", f"/api/v1/nodes/{mac}")
        assert status == 200, body
        (root / "api" / "v1" / "nodes" / mac).write_bytes(body)
    port = free_port()
    conf = nginx.write_config(work / "nginx", "127.0.0.1", port, root)
    proc = bed.spawn_server(nginx.argv(nginx.binary(), work / "nginx", conf),
                            work / "nginx" / "stdout.log")
    peer = RawHttp("127.0.0.1", port)
    try:
        for _ in range(100):  # bounded: nginx answers within 10 s
            try:
                status, body = await peer.request("GET", f"/api/v1/nodes/{macs[0]}")
            except OSError:
                await peer.close()
                await asyncio.sleep(0.1)
                continue
            if status != 200:
                raise SystemExit(f"nginx answered {status}: {body[:200]!r}; see {work}/nginx")
            break
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(4):
            ours += await measure_gets(api, macs, count // 4)
            theirs += await measure_gets(peer, macs, count // 4)
    finally:
        await peer.close()
        bed.stop(proc)
    print(summary(f"GET /api/v1/nodes/{{mac}} ({len(macs)} MACs)", ours, 10))
    print(summary(f"  nginx {nginx.version(nginx.binary())}, same bodies", theirs, None))
    print(f"  ours / nginx: median {statistics.median(ours) / statistics.median(theirs):.2f}x, "
          f"p99 {percentile(ours, 99) / percentile(theirs, 99):.2f}x")


async def measure_pages(api: RawHttp, rounds: int) -> tuple[list[float], int]:
    latencies, seen = [], 0
    for _ in range(rounds):
        cursor: str | None = None
        seen = 0
        for _ in range(1000):  # bounded: 10,000 nodes are 20 pages
            query = "limit=500" + (f"&cursor={cursor}" if cursor else "")
            started = time.perf_counter()
            status, body = await api.request("GET", f"/api/v1/nodes?{query}")
            latencies.append(time.perf_counter() - started)
            assert status == 200, body
            page = json.loads(body)
            seen += len(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
    return latencies, seen


async def measure_callbacks(url: str, settings: Settings, boot_tokens: dict[int, str],
                            rate: float) -> tuple[list[float], list[float], int]:
    """Send the callbacks at `rate`/s from WORKERS kept-alive connections; return (to booted,
    to ready) seconds and the number refused."""
    host, port = url.removeprefix("http://").split(":")
    jobs: asyncio.Queue[tuple[int, str, float] | None] = asyncio.Queue()
    sent: dict[int, float] = {}
    answered: list[float] = []
    failures = 0

    async def worker() -> None:
        nonlocal failures
        client = RawHttp(host, int(port))
        try:
            while (job := await jobs.get()) is not None:
                i, token, due = job
                body = json.dumps({"mac": mac_of(i).value, "token": token, "image": "compute",
                                   "version": "1", "facts": {"cpus": 2, "memory_mib": 1024}})
                sent[i] = due
                status, _ = await client.request("POST", "/node/v1/booted", body.encode())
                answered.append(time.time() - due)
                failures += status != 200
        finally:
            await client.close()

    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    start, wall = time.monotonic(), time.time()
    for n, (i, token) in enumerate(sorted(boot_tokens.items())):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        jobs.put_nowait((i, token, wall + n / rate))  # due time: a late send counts as latency
    sending = time.monotonic() - start
    for _ in workers:
        jobs.put_nowait(None)
    await asyncio.gather(*workers)
    print(f"  sent {len(sent)} in {sending:.1f} s, all answered after "
          f"{time.monotonic() - start:.1f} s; answer median "
          f"{statistics.median(answered) * 1e3:.1f} ms, "
          f"p99 {percentile(answered, 99) * 1e3:.1f} ms")
    booted, ready = await collect(settings, sent)
    return booted, ready, failures


async def collect(settings: Settings, sent: dict[int, float]) -> tuple[list[float], list[float]]:
    """Wait (bounded) for every node's ready event; return send-to-booted and send-to-ready."""
    store = open_store(settings)
    inventory = Inventory(store)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            nodes = await inventory.list_nodes(state=NodeState.READY)
            if len(nodes) >= len(sent):
                break
            await asyncio.sleep(0.5)
        booted: list[float] = []
        ready: list[float] = []

        async def times(i: int) -> None:
            events = {e.kind: e.at for e in await inventory.list_events(mac_of(i))}
            if "booted" in events:
                booted.append(events["booted"] - sent[i])
            if "ready" in events:
                ready.append(events["ready"] - sent[i])

        await batched(sorted(sent), times)
        return booted, ready
    finally:
        await store.close()


# -- one backend -----------------------------------------------------------------------------


async def run_backend(backend: str, args: argparse.Namespace, work: Path, bed: Testbed) -> None:
    print(f"\n== {backend}: {args.nodes} nodes ==")
    etcd: Etcd | None = None
    env = {"PROVISIONER_DATA_DIR": str(work), "PROVISIONER_CONFIG": "",
           "PROVISIONER_STORE_BACKEND": backend, "PROVISIONER_TFTP_ENABLED": "false",
           "PROVISIONER_BOOT_LISTEN": "127.0.0.1", "PROVISIONER_BOOT_PORT": "0",
           "PROVISIONER_API_LISTEN": "127.0.0.1", "PROVISIONER_API_PORT": str(free_port()),
           "PROVISIONER_SCHEDULER_LISTEN": "127.0.0.1",
           "PROVISIONER_SCHEDULER_PORT": str(free_port()),
           "PROVISIONER_HANDOFF_KIND": args.handoff}
    if backend == "etcd":
        etcd = Etcd(bed, work / "etcd")
        etcd.start()
        env["PROVISIONER_STORE_ENDPOINTS"] = etcd.endpoint
    processes: list[subprocess.Popen[bytes]] = []
    try:
        settings = load_settings(env=env)
        bearer, boot_tokens = await stage(settings, args.nodes, args.callbacks)
        sched_log, api_log = work / "scheduler.log", work / "appliance.log"
        if args.handoff == "builtin":
            sched_env = env
            if backend == "sqlite" and args.scheduler_store == "own":
                sched_env = {**env, "PROVISIONER_STORE_PATH": str(work / "scheduler.db")}
            processes.append(spawn(["scheduler", "serve", "--log-level", "warning"],
                                   sched_env, sched_log))
            await wait_http(f"{settings.scheduler.client_url}/sched/v1/nodes", processes[-1],
                            sched_log)
        processes.append(spawn(["serve", "--log-level", "warning"], env, api_log))
        url = f"http://127.0.0.1:{settings.api.port}"
        await wait_http(f"{url}/healthz", processes[-1], api_log)
        api = RawHttp("127.0.0.1", settings.api.port, {"Authorization": f"Bearer {bearer}"})
        try:
            everyone = [mac_of(i).value for i in range(args.nodes)]
            await measure_gets(api, everyone, 100)  # warm up the connection and caches
            print(summary("GET /api/v1/nodes/{mac}", await measure_gets(
                api, everyone, args.gets), 10))
            await gets_against_nginx(api, bed, work, args.nodes, args.gets)
            pages, seen = await measure_pages(api, 3)
            print(summary(f"GET /api/v1/nodes?limit=500 ({seen} nodes)", pages, 100))
        finally:
            await api.close()
        booted, ready, failures = await measure_callbacks(url, settings, boot_tokens, args.rate)
        print(f"  {len(boot_tokens)} callbacks at {args.rate:g}/s: {failures} refused, "
              f"{len(ready)} ready within {READY_TIMEOUT:g} s")
        print(summary("callback -> booted (appliance only)", booted, 100))
        if ready:
            print(summary("callback -> ready (incl. scheduler round trip)", ready, 100))
        warnings = [line for line in api_log.read_text().splitlines() if "WARNING" in line]
        if warnings:
            print(f"  appliance warnings: {len(warnings)}, first: {warnings[0][:300]}")
    except (httpx.HTTPError, AssertionError):
        for log in (work / "appliance.log", work / "scheduler.log"):
            if log.exists():
                print(f"--- {log.name} (tail) ---\n{log.read_text()[-3000:]}")
        raise
    finally:
        for process in reversed(processes):
            stop(process)
        if etcd is not None:
            etcd.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,etcd")
    parser.add_argument("--rate", type=float, default=200.0, help="callbacks per second")
    parser.add_argument("--callbacks", type=int, default=1000)
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--handoff", default="builtin", choices=("builtin", "none"),
                        help="none: measure the appliance alone (booted is ready at once)")
    parser.add_argument("--scheduler-store", default="shared", choices=("shared", "own"),
                        help="sqlite: the scheduler in the appliance's file, or its own")
    args = parser.parse_args(argv)
    args.callbacks = min(args.callbacks, args.nodes)
    random.seed(1)
    with unwinding(), Testbed.create(loopback=True) as bed:
        for backend in args.backends.split(","):
            with tempfile.TemporaryDirectory(prefix=f"bench-api-{backend}-") as work:
                asyncio.run(run_backend(backend, args, Path(work), bed))


if __name__ == "__main__":
    main()
