"""schemathesis against the scheduler's own OpenAPI schema over real HTTP: no 5xx, and every
status, content type and body as the schema declares it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from tests.scheduler.live import LiveScheduler

MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


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
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    assert len(operations) >= 11
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(base_url=live.url, checks=CHECKS, timeout=10)

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to get wrong (GET /healthz)
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)
