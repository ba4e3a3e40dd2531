"""schemathesis against one of our services' OpenAPI schemas over real HTTP, driven through
hypothesis (its pytest plugin breaks on the pytest here): every operation, MAX_EXAMPLES
generated requests each; no 5xx, and every status, content type and body as the schema
declares it. Used by the admin API's and the scheduler's schema tests."""

from __future__ import annotations

from typing import Any

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

MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def schema_operations(schema: schemathesis.BaseSchema) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]


def schema_failures(schema: schemathesis.BaseSchema, base_url: str, mode: GenerationMode,
                    headers: dict[str, str] | None = None) -> list[str]:
    """Each operation's first failure (all of them, not only the first operation's)."""
    failures: list[str] = []
    for operation in schema_operations(schema):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=10)

        try:
            run()
        except Unsatisfiable:
            # No parameter to get wrong (GET /healthz): only a negative run may find none.
            if mode is not GenerationMode.NEGATIVE:
                failures.append(f"{operation.label}: no example could be generated")
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    return failures
