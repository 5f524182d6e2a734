"""Property-based requests generated from /openapi.json (schemathesis) never get a 5xx.

A bounded number of examples per operation, against the live server with the fake runner (the
API layer is under test, not the agent); limits are raised so 429s do not hide the routes.
(schemathesis' pytest plugin does not load fixtures under this pytest, so the operations are
walked by hand with hypothesis' `@given`.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis

# Imported at collection, not lazily inside the test: pytest rewrites schemathesis (a plugin)
# with ast.parse, and on CPython 3.11.7 ast.parse shares one recursion counter between threads
# ("AST constructor recursion depth mismatch" when the live server's thread formats a
# traceback, which also parses, at the same moment).
import schemathesis.specs.openapi.schemas  # noqa: F401
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.service.conftest import auth
from tests.service.fakes import LiveServer

pytestmark = pytest.mark.slow

EXAMPLES = 25


def test_generated_requests_never_get_a_server_error(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server(rate_limit_per_minute=100_000, max_concurrent_runs=10_000)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    results: list[Any] = list(schema.get_all_operations())
    operations = [result.ok() for result in results]
    assert len(operations) >= 13  # images.edit and /resume included
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(
                base_url=server.url, headers=auth(), checks=[not_a_server_error], timeout=30
            )

        check()
