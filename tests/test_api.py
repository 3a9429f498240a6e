"""The HTTP API against a real PostgreSQL, through httpx's ASGI transport (no network server)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from oee_stream.config import Plant
from oee_stream.engine.result import iso
from oee_stream.storage.writer import StateInterval, StorageWriter
from test_storage import T0, make_result  # tests/ is on sys.path (conftest)

DEMO = Path(__file__).resolve().parents[1] / "deploy" / "demo" / "plant.yaml"


async def _client(app: FastAPI, *, refresh_cache: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the app. `refresh_cache`: bring the app's live cache up to date with the
    database before every request, so tests that write with their own StorageWriter (another "process")
    and read at once see their rows on the cache path too."""
    # ASGITransport does not run the lifespan, which owns the connection pool: run it here.
    async with app.router.lifespan_context(app):
        hooks: dict[str, list[Any]] = {}
        if refresh_cache:
            async def refresh(_: httpx.Request) -> None:
                async with app.state.pool.connection() as conn:
                    await app.state.cache.refresh(conn)
                assert app.state.cache.fresh()

            hooks["request"] = [refresh]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", event_hooks=hooks) as client:
            yield client


def api_settings(db: str, plant: Plant, mode: str, **kw: Any) -> Any:
    """`db`: every read from the database (no live cache); `cache`: live routes answered from the cache."""
    from oee_stream.api import ApiSettings

    # cache: the background refresh runs once at start; the request hook refreshes before every request.
    return ApiSettings(database_url=db, plant=plant, cache_refresh_s=0 if mode == "db" else 3600.0, **kw)


@pytest.fixture(params=["db", "cache"])
async def client(request: pytest.FixtureRequest, db: str, plant: Plant) -> AsyncIterator[httpx.AsyncClient]:
    from oee_stream.api import create_app

    app = create_app(api_settings(db, plant, request.param, anonymous_read=True))
    async for c in _client(app, refresh_cache=request.param == "cache"):
        yield c


@pytest.fixture
async def down_client(plant: Plant) -> AsyncIterator[httpx.AsyncClient]:
    from oee_stream.api import ApiSettings, create_app
    from oee_stream.embedded import free_port

    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    settings = ApiSettings(database_url=closed, plant=plant, readyz_timeout_s=0.5, request_timeout_s=0.5,
                           anonymous_read=True)
    async for c in _client(create_app(settings)):
        yield c


async def test_probes_and_docs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/livez")).status_code == 200
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"ready": True, "dependencies": {"database": {"ok": True, "detail": None}}}
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/machines/{machine_id}/oee" in spec["paths"]
    assert spec["components"]["schemas"]["KpiRecord"]["properties"]["oee"]["description"]


async def test_readyz_503_when_database_unreachable(down_client: httpx.AsyncClient) -> None:
    assert (await down_client.get("/livez")).status_code == 200
    r = await down_client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["ready"] is False and body["dependencies"]["database"]["ok"] is False
    r = await down_client.get("/api/v1/machines")
    assert r.status_code == 503 and "database unavailable" in r.json()["detail"]


async def test_machines_lists_plant_with_state_and_latest_kpis(
    client: httpx.AsyncClient, db: str
) -> None:
    async with StorageWriter(db) as w:
        await w.write_results([
            make_result("press-1", "15m", T0, 900, total=300, good=290),
            make_result("press-1", "15m", T0 + 900, 900, total=400, good=400,
                        state="running", state_since=T0 + 100),  # the newer 15m window
            make_result("press-1", "shift", T0, 8 * 3600, seconds={"running": 28800}, total=10000,
                        good=9000, shift="early"),
            make_result("furnace-1", "1h", T0, 3600, total=20, good=19, state="planned_stop",
                        reason="skimming", state_since=T0 + 3000),
        ])
        await w.write_state_intervals([StateInterval("caster-1", T0 + 50, None, "unplanned_stop", "metal leak")])
        await w.flush(10)
    r = await client.get("/api/v1/machines")
    assert r.status_code == 200
    machines = {m["id"]: m for m in r.json()}
    assert list(machines) == ["press-1", "furnace-1", "caster-1"]
    press = machines["press-1"]
    assert press["line"] == "extrusion" and press["area"] == "extrusion" and press["kind"] == "discrete"
    assert press["unit"] == "billets" and press["name"] == "Extrusion press 1 (2500 t)"
    assert set(press["kpis"]) == {"15m", "shift"}
    assert press["kpis"]["15m"]["start"].startswith(iso(T0 + 900)[:19])
    assert press["kpis"]["15m"]["total"] == 400
    assert press["state"] == "running"
    furnace = machines["furnace-1"]
    assert furnace["kind"] == "rate" and furnace["state"] == "planned_stop" and furnace["reason"] == "skimming"
    caster = machines["caster-1"]
    assert caster["state"] == "unplanned_stop" and caster["reason"] == "metal leak"
    assert caster["state_since"].startswith(iso(T0 + 50)[:19])
    assert caster["kpis"] == {}


async def test_latest_window_result_and_errors(client: httpx.AsyncClient, db: str) -> None:
    res = make_result("press-1", "1h", T0, 3600, seconds={"running": 3600}, total=1500, good=1400)
    async with StorageWriter(db) as w:
        await w.write_results([res])
        await w.flush(10)
    r = await client.get("/api/v1/machines/press-1/oee", params={"window": "1h"})
    assert r.status_code == 200
    body = r.json()
    assert body["window"] == "1h" and body["total"] == 1500
    assert body["oee"] == pytest.approx(res.oee)
    assert body["seconds"]["running"] == 3600

    r = await client.get("/api/v1/machines/nope/oee", params={"window": "1h"})
    assert r.status_code == 404 and "nope" in r.json()["detail"] and "press-1" in r.json()["detail"]

    r = await client.get("/api/v1/machines/press-1/oee", params={"window": "fortnight"})
    assert r.status_code == 422
    detail = r.json()["detail"]
    for w in ("15m", "1h", "8h", "24h", "shift", "day", "week"):
        assert w in detail

    r = await client.get("/api/v1/machines/press-1/oee", params={"window": "shift"})
    assert r.status_code == 404 and "no stored" in r.json()["detail"]

    r = await client.get("/api/v1/machines/press-1/oee")
    assert r.status_code == 422


async def test_range_rollup_adds_then_divides(client: httpx.AsyncClient, db: str) -> None:
    h1 = make_result("press-1", "hour", T0, seconds={"running": 3000, "unplanned_stop": 600},
                     total=1200, good=1100, stops=2)
    h2 = make_result("press-1", "hour", T0 + 3600,
                     seconds={"unscheduled": 1800, "running": 1200, "planned_stop": 600}, total=500, good=450)
    outside = make_result("press-1", "hour", T0 + 7200, total=1800, good=1800)
    other_kind = make_result("press-1", "1h", T0, total=1, good=1)
    async with StorageWriter(db) as w:
        await w.write_results([h1, h2, outside, other_kind])
        await w.flush(10)
    r = await client.get(
        "/api/v1/machines/press-1/oee", params={"start": iso(T0), "end": iso(T0 + 7200)}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    # Hand calculation from the sums: PPT = 3600 + 1800, run = 3000 + 1200,
    # net = 2 s x (1200 + 500), good/total = 1550 / 1700.
    ppt, run, net, good, total = 5400.0, 4200.0, 3400.0, 1550.0, 1700.0
    a, p, q = run / ppt, net / run, good / total
    assert body["window"] == "range" and body["records"] == 2
    assert body["availability"] == pytest.approx(a)
    assert body["performance"] == pytest.approx(p)
    assert body["quality"] == pytest.approx(q)
    assert body["oee"] == pytest.approx(a * p * q)
    assert body["oee"] == pytest.approx(0.574074, abs=1e-6)
    assert body["teep"] == pytest.approx(a * p * q * ppt / 7200)
    mean_of_ratios = (h1.oee + h2.oee) / 2
    assert mean_of_ratios == pytest.approx(0.555556, abs=1e-6)
    assert abs(body["oee"] - mean_of_ratios) > 0.015
    assert body["flags"] == []
    assert body["start"].startswith(iso(T0)[:19]) and body["end"].startswith(iso(T0 + 7200)[:19])

    # A local-time range with an offset is the same instant range.
    r2 = await client.get(
        "/api/v1/machines/press-1/oee",
        params={"start": "2025-06-15T17:00:00+02:00", "end": "2025-06-15T19:00:00+02:00"},
    )
    assert r2.status_code == 200

    # Missing hours are flagged, not invented; an empty range gives nulls (never NaN).
    r3 = await client.get(
        "/api/v1/machines/press-1/oee", params={"start": iso(T0 - 3600), "end": iso(T0 + 3600)}
    )
    assert "partial_range" in r3.json()["flags"]
    r4 = await client.get(
        "/api/v1/machines/caster-1/oee", params={"start": iso(T0), "end": iso(T0 + 3600)}
    )
    assert r4.status_code == 200
    empty = json.loads(r4.text)
    assert empty["oee"] is None and empty["availability"] is None and "no_data" in empty["flags"]
    assert empty["unit"] == "logs"
    assert "NaN" not in r4.text


async def test_range_parameter_errors(client: httpx.AsyncClient) -> None:
    url = "/api/v1/machines/press-1/oee"
    r = await client.get(url, params={"start": iso(T0)})
    assert r.status_code == 422 and "both start and end" in r.json()["detail"]
    r = await client.get(url, params={"start": iso(T0 + 10), "end": iso(T0)})
    assert r.status_code == 422 and "after start" in r.json()["detail"]
    r = await client.get(url, params={"start": "2025-06-15T10:00:00", "end": "2025-06-15T12:00:00"})
    assert r.status_code == 422 and "offset" in r.json()["detail"]
    r = await client.get(url, params={"start": iso(T0), "end": iso(T0 + 3600), "window": "1h"})
    assert r.status_code == 422
    r = await client.get(url, params={"start": "yesterday", "end": iso(T0)})
    assert r.status_code == 422
