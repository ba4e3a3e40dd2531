"""schemathesis against the scheduler's own OpenAPI schema over real HTTP: no 5xx, and every
status, content type and body as the schema declares it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode

from tests.scheduler.live import LiveScheduler
from tests.support.schema_run import schema_failures, schema_operations


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveScheduler]:
    server = LiveScheduler(tmp_path_factory.mktemp("sched") / "store.db").start()
    try:
        # Something to find: a node, and jobs in several states.
        httpx.put(f"{server.url}/sched/v1/nodes/node001", json={"cpus": 2, "memory_mib": 64})
        for _ in range(3):
            httpx.post(f"{server.url}/sched/v1/jobs",
                       json={"cpus": 1, "memory_mib": 1, "walltime": 5, "command": "true"})
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_scheduler_matches_its_schema(live: LiveScheduler, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    assert len(schema_operations(schema)) >= 11
    failures = schema_failures(schema, live.url, mode)
    assert not failures, "\n\n".join(failures)
