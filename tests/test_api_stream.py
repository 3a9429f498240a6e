"""/metrics and the Server-Sent Events stream, through a real uvicorn server (SSE needs a streaming client)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn

from oee_stream.config import Plant
from oee_stream.embedded import free_port
from oee_stream.engine.result import iso
from oee_stream.storage.migrations import migrate
from oee_stream.storage.writer import StateInterval, StorageWriter
from test_storage import T0, make_result

DEMO = Path(__file__).resolve().parents[1] / "deploy" / "demo" / "plant.yaml"


@contextlib.asynccontextmanager
async def serve(db: str, plant: Plant, **kw: object) -> AsyncIterator[str]:
    from oee_stream.api import ApiSettings, create_app

    settings = ApiSettings(database_url=db, plant=plant, anonymous_read=True, **kw)  # type: ignore[arg-type]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "server failed to start"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def read_events(lines: AsyncIterator[str], n: int, timeout: float = 10) -> list[tuple[str, str]]:
    """The next n events/comments as (event or ':', data)."""
    out: list[tuple[str, str]] = []
    event, data = "", ""
    async with asyncio.timeout(timeout):
        async for line in lines:
            if line.startswith(":"):
                out.append((":", line[1:].strip()))
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "" and event:
                out.append((event, data))
                event, data = "", ""
            if len(out) >= n:
                return out
    return out


async def test_metrics_endpoint_serves_prometheus_text(fresh_db_url: str, plant: Plant) -> None:
    migrate(fresh_db_url)
    async with serve(fresh_db_url, plant) as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/metrics/")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        assert "oee_samples_ingested_total" in r.text
        r = await c.get("/metrics", follow_redirects=True)
        assert r.status_code == 200 and "oee_db_buffered_rows" in r.text


async def test_stream_sends_machines_state_changes_and_heartbeats(fresh_db_url: str, plant: Plant) -> None:
    migrate(fresh_db_url)
    async with StorageWriter(fresh_db_url) as w:
        await w.write_results([make_result("press-1", "15m", T0, 900, total=300, good=290)])
        await w.write_state_intervals([StateInterval("press-1", T0, None, "running")])
        await w.flush(10)
    async with serve(fresh_db_url, plant, stream_interval_s=0.2, stream_heartbeat_s=0.5) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as c:
        async with c.stream("GET", "/api/v1/stream") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.aiter_lines()
            first = await read_events(lines, 4)
            kinds = [k for k, _ in first]
            assert kinds[0] == "machines"
            machines = json.loads(first[0][1])
            assert [m["id"] for m in machines] == ["press-1", "furnace-1", "caster-1"]
            assert machines[0]["kpis"]["15m"]["total"] == 300
            states = {json.loads(d)["machine"]: json.loads(d) for k, d in first if k == "state"}
            assert states["press-1"]["state"] == "running"
            # Nothing changes: only heartbeats follow.
            quiet = await read_events(lines, 1, timeout=5)
            assert quiet[0][0] == ":" or quiet[0][0] == "state"
            # The press stops: a state event for it (and a new machines payload).
            async with StorageWriter(fresh_db_url) as w:
                await w.write_state_intervals([
                    StateInterval("press-1", T0, T0 + 600, "running"),
                    StateInterval("press-1", T0 + 600, None, "unplanned_stop", "die failure", "plc"),
                ])
                await w.flush(10)
            seen: list[tuple[str, str]] = []
            async with asyncio.timeout(10):
                while not any(k == "state" for k, _ in seen):
                    seen += await read_events(lines, 1)
            st = next(json.loads(d) for k, d in seen if k == "state")
            assert st == {"machine": "press-1", "state": "unplanned_stop", "reason": "die failure",
                          "state_since": iso(T0 + 600)}  # UTC with Z, as everywhere else
            assert states["press-1"]["state_since"] == iso(T0)
            assert any(k == "machines" for k, _ in seen)
        # The client went away: the server must still stop promptly (checked by serve()'s wait_for).


async def test_stream_survives_database_outage_with_comment(plant: Plant) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    async with serve(closed, plant, stream_interval_s=0.2, request_timeout_s=0.3) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as c:
        async with c.stream("GET", "/api/v1/stream") as resp:
            assert resp.status_code == 200
            ev = await read_events(resp.aiter_lines(), 1)
            assert ev == [(":", "database unavailable")]
