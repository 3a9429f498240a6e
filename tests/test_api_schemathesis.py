"""Property-based API test: schemathesis generates requests from the app's own OpenAPI schema and sends them
to the API served by uvicorn on a real PostgreSQL with data (results, intervals, an admin key).

Every answer must be no server error (5xx), have a status code the schema declares, the declared content
type, and a body that validates against the declared schema. Bounded: a few examples per operation.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from oee_stream.api import ApiSettings, create_app  # noqa: E402
from oee_stream.api.auth import create_api_key  # noqa: E402
from oee_stream.config import Plant  # noqa: E402
from oee_stream.embedded import free_port  # noqa: E402
from oee_stream.storage.writer import StateInterval  # noqa: E402
from test_storage import T0, make_result  # noqa: E402

KEY: dict[str, str] = {}
# Examples per operation: small by default (the run stays well under a minute); raise it for a deeper search.
EXAMPLES = int(os.environ.get("OEE_SCHEMATHESIS_EXAMPLES", "6"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _seed(url: str) -> None:
    import asyncio

    from oee_stream.storage.writer import StorageWriter

    async def go() -> None:
        async with StorageWriter(url) as w:
            await w.write_results([make_result(m, w_, T0, 900 if w_ == "15m" else 3600, total=100, good=90)
                                   for m in ("press-1", "furnace-1", "caster-1") for w_ in ("15m", "1h", "hour")])
            await w.write_state_intervals([
                StateInterval("press-1", T0, T0 + 600, "unplanned_stop", "die failure", "plc"),
                StateInterval("press-1", T0 + 600, None, "running"),
            ])
            await w.flush(10)

    asyncio.run(go())


@pytest.fixture(scope="module")
def served_api(database_url: str, ) -> Iterator[str]:
    from harness import temporary_database
    from oee_stream.config import load_plant
    from oee_stream.storage.migrations import migrate
    from test_api import DEMO

    plant: Plant = load_plant(DEMO)
    with temporary_database(database_url) as url:
        migrate(url)
        _seed(url)
        KEY["admin"] = create_api_key(url, "schemathesis", "admin")
        port = free_port()
        app = create_app(ApiSettings(database_url=url, plant=plant))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               access_log=False, lifespan="on"))
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)


def test_api_conforms_to_its_schema(served_api: str) -> None:
    """Each operation of the schema gets a few generated requests (schemathesis strategies driven by
    hypothesis here: schemathesis' own pytest loader does not support pytest 9 yet)."""
    from hypothesis import given

    # Both credential headers: schemathesis fills the declared security schemes with made-up keys otherwise.
    auth = {"Authorization": f"Bearer {KEY['admin']}", "X-API-Key": KEY["admin"]}
    schema = schemathesis.openapi.from_url(f"{served_api}/openapi.json", headers=auth)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path == "/api/v1/stream":  # never ends; it has its own tests (test_api_stream.py)
            continue
        operations += 1

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            case.call_and_validate(headers=auth, checks=CHECKS, timeout=10)

        try:
            run()
        except Exception as exc:
            failures.append(f"{op.method.upper()} {op.path}: {str(exc)[:1500]}")
    assert operations >= 20
    assert not failures, "\n\n".join(failures)
