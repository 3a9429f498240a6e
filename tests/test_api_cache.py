"""The live cache (api/cache.py) answers exactly what the database answers.

The same requests go to two apps on one database: one with every read from the database, one whose live
routes are answered from memory — fed by the StorageWriter (as in `oee-stream run`) or refreshed from the
database (a split-out API). Their JSON must be equal. Plus: API keys are verified once and then served
from memory, a revocation takes effect at once, and a stale cache is not used.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from oee_stream.api import create_app
from oee_stream.api.app import live_cache_for
from oee_stream.api.auth import create_api_key, revoke_api_key
from oee_stream.config import Plant
from oee_stream.storage import edits
from oee_stream.storage.writer import StateInterval, StorageWriter, result_row
from test_api import _client, api_settings
from test_storage import T0, make_result


def kind(r: Any, k: str) -> Any:
    r.entity_kind = k
    return r


def dataset() -> list[Any]:
    """Results of every level and several windows, incl. a line and an area sharing the id `extrusion`."""
    out = []
    for i, m in enumerate(("press-1", "furnace-1", "caster-1")):
        out += [
            make_result(m, "15m", T0, 900, total=300 + i, good=290 + i),
            make_result(m, "15m", T0 + 900, 900, total=400 + i, good=399, state="running", state_since=T0 + 100),
            make_result(m, "1h", T0, 3600, seconds={"running": 3000, "unplanned_stop": 600}, total=1000, good=950,
                        stops=2, flags=["performance_over_100"]),
            make_result(m, "shift", T0 - 3600, 8 * 3600, seconds={"running": 28800}, total=9000, good=8800,
                        shift="late"),
            make_result(m, "hour", T0, 3600, total=100, good=99),
        ]
    out += [kind(make_result("extrusion", "15m", T0, 900, total=1, good=1), "line"),
            kind(make_result("extrusion", "15m", T0, 900, total=2, good=2), "area"),
            kind(make_result("casthouse", "1h", T0, 3600, total=3, good=3), "line"),
            kind(make_result("alu-works", "15m", T0 + 900, 900, total=4, good=4), "site")]
    return out


INTERVALS = [
    StateInterval("press-1", T0, T0 + 600, "running"),
    StateInterval("press-1", T0 + 600, None, "unplanned_stop", "die failure", "plc"),
    StateInterval("caster-1", T0 + 50, None, "planned_stop", "mould change", "rule"),
    StateInterval("furnace-1", T0, T0 + 100, "micro_stop", None, "rule"),  # latest interval, closed
]


def live_paths(plant: Plant) -> list[str]:
    paths = ["/api/v1/machines", "/api/v1/plant", "/api/v1/plant?tz=plant", "/api/v1/plant?windows=15m,shift"]
    for m in plant.machines:
        for w in ("15m", "1h", "8h", "24h", "shift", "day", "hour"):
            paths += [f"/api/v1/machines/{m.id}/oee?window={w}", f"/api/v1/entities/{m.id}/oee?window={w}&tz=plant"]
    for e, k in (("extrusion", "line"), ("extrusion", "area"), ("casthouse", "line"), ("alu-works", "site")):
        paths += [f"/api/v1/entities/{e}/oee?window=15m&kind={k}", f"/api/v1/entities/{e}/oee?window=1h&kind={k}"]
    return paths


def _timeless(body: Any) -> Any:
    """Drop what depends on the moment of the request (generated_at, state_age_s)."""
    if isinstance(body, dict):
        return {k: _timeless(v) for k, v in body.items() if k not in ("generated_at", "state_age_s")}
    if isinstance(body, list):
        return [_timeless(v) for v in body]
    return body


async def assert_same(cached: httpx.AsyncClient, direct: httpx.AsyncClient, plant: Plant) -> None:
    for path in live_paths(plant):
        a, b = await cached.get(path), await direct.get(path)
        assert a.status_code == b.status_code, path
        assert _timeless(a.json()) == _timeless(b.json()), path
        if a.status_code == 200:
            assert a.headers["content-type"] == b.headers["content-type"], path


@pytest.fixture
async def direct(db: str, plant: Plant) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(create_app(api_settings(db, plant, "db", anonymous_read=True))):
        yield c


async def test_fed_cache_equals_the_database(db: str, plant: Plant, direct: httpx.AsyncClient) -> None:
    settings = api_settings(db, plant, "cache", anonymous_read=True, cache_stale_after_s=3600.0)
    cache = live_cache_for(settings)
    app = create_app(settings, cache=cache)
    async for c in _client(app):
        async with StorageWriter(db) as w:
            w.add_listener(cache.on_written)
            # The background refresh ran once at start (empty database); from here on only the feed.
            for _ in range(100):
                if cache.refreshes:
                    break
                await _sleep(0.05)
            assert cache.refreshes == 1 and cache.results == {}
            await w.write_results(dataset())
            await w.write_state_intervals(INTERVALS)
            await w.flush(10)
            assert cache.fed_rows > 0
            await assert_same(c, direct, plant)
            # A stale replay (older computed_at) is refused by the database, so the cache must keep the newer.
            old = make_result("press-1", "15m", T0 + 900, 900, total=1, good=1)
            await w._put("results", [result_row(old, datetime.now(UTC) - timedelta(hours=1))])
            # An operator reason set by another process survives the engine re-emitting the interval: the
            # row the upsert returns carries it, and so does the cache.
            async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
                await edits.set_reason(conn, "test", "press-1", datetime.fromtimestamp(T0 + 600, UTC),
                                       reason="die change", category="planned_stop", comment=None)
            await w.write_state_intervals([StateInterval("press-1", T0 + 600, None, "unplanned_stop", "die failure",
                                                         "plc")])
            # A newer window replaces the cached one.
            await w.write_results([make_result("caster-1", "15m", T0 + 1800, 900, total=7, good=7)])
            await w.flush(10)
        assert cache.refreshes == 1  # everything above came through the feed
        r = await c.get("/api/v1/machines")
        press = next(m for m in r.json() if m["id"] == "press-1")
        assert press["reason"] == "die change" and press["kpis"]["15m"]["total"] == 400
        hits = cache.fast_path_hits
        await assert_same(c, direct, plant)
        assert cache.fast_path_hits > hits  # …/oee?window= answered without routing, and equal


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


async def test_refreshed_cache_equals_the_database(db: str, plant: Plant, direct: httpx.AsyncClient) -> None:
    settings = api_settings(db, plant, "cache", anonymous_read=True, cache_stale_after_s=3600.0)
    app = create_app(settings)
    async for c in _client(app):
        cache = app.state.cache
        # Written by another process: invisible to this API until it refreshes.
        async with StorageWriter(db) as w:
            await w.write_results(dataset())
            await w.write_state_intervals(INTERVALS)
            await w.flush(10)
        async with app.state.pool.connection() as conn:
            await cache.refresh(conn)
        await assert_same(c, direct, plant)
        first = cache.result("machine", "press-1", "15m")
        # Unchanged rows are not fetched again (same object), a re-emitted one is.
        async with StorageWriter(db) as w:
            await w.write_results([make_result("furnace-1", "15m", T0 + 900, 900, total=5, good=5)])
            await w.write_state_intervals([StateInterval("press-1", T0 + 600, T0 + 700, "unplanned_stop", "die failure",
                                                         "plc")])
            await w.flush(10)
        async with app.state.pool.connection() as conn:
            await cache.refresh(conn)
        assert cache.result("machine", "press-1", "15m") is first
        assert cache.result("machine", "furnace-1", "15m").stored.payload["total"] == 5
        await assert_same(c, direct, plant)
        r = await c.get("/api/v1/machines")
        # Its last interval ended: no open state, so the state of the newest result (running), not the stop.
        assert next(m for m in r.json() if m["id"] == "press-1")["state"] == "running"
        # Rows deleted in the database (retention, by hand) leave the cache at the next refresh.
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            await conn.execute("DELETE FROM oee_results WHERE entity = 'furnace-1' AND window_kind = '15m'")
            await conn.execute("DELETE FROM state_intervals WHERE machine_id = 'caster-1'")
        async with app.state.pool.connection() as conn:
            await cache.refresh(conn)
        assert cache.result("machine", "furnace-1", "15m") is None and "caster-1" not in cache.intervals
        await assert_same(c, direct, plant)


async def test_stale_cache_is_not_used(db: str, plant: Plant) -> None:
    app = create_app(api_settings(db, plant, "cache", anonymous_read=True, cache_stale_after_s=1.0))
    async for c in _client(app):
        cache = app.state.cache
        async with app.state.pool.connection() as conn:
            await cache.refresh(conn)
        async with StorageWriter(db) as w:
            await w.write_results([make_result("press-1", "15m", T0, 900, total=300, good=290)])
            await w.flush(10)
        # Fresh cache, not refreshed since the write: the cached answer (nothing stored yet).
        assert (await c.get("/api/v1/machines/press-1/oee?window=15m")).status_code == 404
        cache.refreshed_at = time.monotonic() - 10  # the refresh loop stopped succeeding
        r = await c.get("/api/v1/machines/press-1/oee?window=15m")
        assert r.status_code == 200 and r.json()["total"] == 300


async def test_keys_verified_once_and_revocation_is_immediate(db: str, plant: Plant) -> None:
    viewer = create_api_key(db, "board", "viewer")
    other = create_api_key(db, "mes", "viewer")
    admin = create_api_key(db, "it", "admin")
    app = create_app(api_settings(db, plant, "cache"))
    async for c in _client(app):
        h = {"Authorization": f"Bearer {viewer}"}
        for _ in range(20):
            assert (await c.get("/api/v1/machines", headers=h)).status_code == 200
        mw_verifier = app.state.verifier
        assert mw_verifier.lookups == 1  # one database look-up, then memory
        # Revoked through the API: refused on the very next request (no waiting for the cache TTL).
        key_id = viewer.split("_")[1]
        r = await c.delete(f"/api/v1/admin/keys/{key_id}", headers={"X-API-Key": admin})
        assert r.status_code == 204
        assert (await c.get("/api/v1/machines", headers=h)).status_code == 401
        # Revoked by another process (the CLI): refused once the refresh loop polled the revocations.
        h2 = {"X-API-Key": other}
        assert (await c.get("/api/v1/machines", headers=h2)).status_code == 200
        assert revoke_api_key(db, other.split("_")[1])
        async with app.state.pool.connection() as conn:
            await mw_verifier.poll_revocations(conn)
        assert (await c.get("/api/v1/machines", headers=h2)).status_code == 401
