"""Storage against a real PostgreSQL: migrations, idempotent writes, upserts, outage and roll-up."""

from __future__ import annotations

import asyncio
import math
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from oee_stream.bus import Sample
from oee_stream.config import load_plant
from oee_stream.engine.result import SIX_BIG_LOSSES, TIME_CLASSES, KpiResult
from oee_stream.storage.migrations import MIGRATIONS, migrate
from oee_stream.storage.queries import rollup
from oee_stream.storage.writer import StateInterval, StorageWriter

DEMO = Path(__file__).resolve().parents[1] / "deploy" / "demo" / "plant.yaml"
T0 = 1_750_000_000.0 - (1_750_000_000.0 % 3600)  # an hour boundary


def make_result(
    entity: str = "press-1",
    window: str = "hour",
    start: float = T0,
    length: float = 3600.0,
    *,
    seconds: dict[str, float] | None = None,
    total: float = 0.0,
    good: float = 0.0,
    ideal_s: float = 2.0,
    microstops_as_performance: bool = True,
    stops: int = 0,
    flags: list[str] | None = None,
    **extra: Any,
) -> KpiResult:
    """A KpiResult consistent with OEE-SEMANTICS section 2 (what the engine would emit)."""
    sec = dict.fromkeys(TIME_CLASSES, 0.0)
    sec.update(seconds or {"running": length})
    ppt = sum(sec[c] for c in ("running", "planned_stop", "unplanned_stop", "micro_stop", "unknown"))
    run = sec["running"] + (sec["micro_stop"] if microstops_as_performance else 0.0)
    net = ideal_s * total
    reject = total - good

    def div(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    q = div(good, total)
    oee = None if ppt <= 0 else (0.0 if total <= 0 else net / ppt * good / total)
    return KpiResult(
        entity=entity, entity_kind="machine", window=window, start=start, end=start + length,
        seconds=sec, total=total, good=good, reject=reject, unit="billets",
        availability=div(run, ppt), performance=div(net, run), quality=q, oee=oee,
        teep=(oee or 0.0) * ppt / length, utilization=div(ppt, length),
        coverage=(1 - sec["unknown"] / ppt) if ppt > 0 else None,
        ppt_s=ppt, run_time_s=run, net_run_time_s=net, fully_productive_s=ideal_s * good, stops=stops,
        mtbf_s=div(run, stops), mttr_s=div(sec["unplanned_stop"], stops),
        six_big_losses_s={
            "unplanned_stops": sec["unplanned_stop"], "planned_stops": sec["planned_stop"],
            "small_stops": sec["micro_stop"], "slow_cycles": sec["running"] - net,
            "production_rejects": ideal_s * reject, "startup_rejects": 0.0,
        },
        downtime_by_reason_s={}, flags=flags or [], config_hash="abc123", **extra,
    )


def count(url: str, query: str, *params: Any) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
        assert row is not None
        return row[0]


# ------------------------------------------------------------------------------------------ migrations


def test_migrations_apply_twice_and_create_tables(fresh_db_url: str) -> None:
    first = migrate(fresh_db_url)
    second = migrate(fresh_db_url)
    assert first.applied == [m.version for m in MIGRATIONS]
    assert second.applied == []
    assert first.current == second.current == MIGRATIONS[-1].version
    assert first.flavor == "postgresql"  # TimescaleDB is not installable here
    with psycopg.connect(fresh_db_url) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "select table_name from information_schema.tables where table_schema = 'public'"
            ).fetchall()
        }
        versions = [r[0] for r in conn.execute("select version from schema_migrations order by 1").fetchall()]
        pk = conn.execute(
            """select array_agg(a.attname::text order by k.ord)
               from pg_index i
               join lateral unnest(i.indkey) with ordinality k(attnum, ord) on true
               join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
               where i.indrelid = 'oee_results'::regclass and i.indisprimary"""
        ).fetchone()
    assert {"samples", "state_intervals", "oee_results", "config_versions", "dead_letters",
            "schema_migrations", "oee_hourly", "oee_daily", "samples_hourly"} <= tables
    assert versions == [m.version for m in MIGRATIONS]
    assert pk is not None and pk[0] == ["entity", "entity_kind", "window_kind", "window_start"]


def test_concurrent_migrations_do_not_race(fresh_db_url: str) -> None:
    errors: list[BaseException] = []
    reports = []

    def run() -> None:
        try:
            reports.append(migrate(fresh_db_url))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(len(r.applied) for r in reports) == [0, 0, 0, len(MIGRATIONS)]


def test_timescaledb_statements_follow_the_2x_api() -> None:
    sql = "\n".join(m.timescaledb for m in MIGRATIONS)
    assert "create_hypertable('samples', by_range('time', INTERVAL '1 day'), if_not_exists => TRUE)" in sql
    assert "timescaledb.compress_segmentby = 'machine_id'" in sql
    assert "SELECT add_compression_policy('samples', INTERVAL '7 days', if_not_exists => TRUE)" in sql
    assert "add_retention_policy('samples', drop_after => INTERVAL '90 days', if_not_exists => TRUE)" in sql
    assert "WITH (timescaledb.continuous" in sql and "WITH NO DATA" in sql
    assert "add_continuous_aggregate_policy('oee_hourly'" in sql
    assert "create_hypertable('connector_events', by_range('time', INTERVAL '30 days'), if_not_exists => TRUE)" in sql
    assert "add_retention_policy('connector_events', drop_after => INTERVAL '90 days', if_not_exists => TRUE)" in sql


def test_key_changes_on_timescaledb_run_with_compression_disabled() -> None:
    """TimescaleDB refuses to drop or add a primary key while compression is enabled on the hypertable:
    every migration after 1 that touches a key must turn compression off first and back on after."""
    import re

    for m in MIGRATIONS[1:]:
        ts = m.statements("timescaledb")
        for table in ("samples", "state_intervals", "oee_results"):
            key_change = re.search(rf"ALTER TABLE {table} (DROP|ADD) CONSTRAINT", ts) or \
                re.search(rf"CREATE UNIQUE INDEX[^;]* ON {table}\b", ts)
            if not key_change:
                continue
            off = ts.find(f"ALTER TABLE {table} SET (timescaledb.compress = false)")
            on = ts.find(f"ALTER TABLE {table} SET (\n    timescaledb.compress,")
            decompress = ts.find(f"decompress_chunk(c, TRUE) FROM show_chunks('{table}')")
            policy_off = ts.find(f"remove_compression_policy('{table}'")
            assert -1 < policy_off < decompress < off < key_change.start() < on, (m.version, table)
            assert f"add_compression_policy('{table}'" in ts[on:], (m.version, table)
    # Plain PostgreSQL gets the key change without any TimescaleDB call.
    assert "timescaledb" not in MIGRATIONS[2].statements("postgresql")
    assert "PRIMARY KEY (entity, entity_kind, window_kind, window_start)" in MIGRATIONS[2].statements("postgresql")


# ------------------------------------------------------------------------------------------ writer


async def test_samples_written_twice_have_no_duplicates(db: str) -> None:
    samples = [
        Sample("press-1", "total", T0 + i, float(i)) for i in range(100)
    ] + [
        Sample("press-1", "product", T0, "6063-T5"),
        Sample("press-1", "run", T0, True),
        Sample("press-1", "state", T0 + 0.123456, 1, "uncertain"),
    ]
    async with StorageWriter(db) as w:
        await w.write_samples(samples)
        await w.write_samples(samples)  # replay after a reconnect
        await w.flush(10)
        assert w.written_rows == 2 * len(samples)
    assert count(db, "select count(*) from samples") == len(samples)
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "select value, text_value from samples where signal = 'product'"
        ).fetchone()
        assert row == (None, "6063-T5")
        assert conn.execute("select value from samples where signal = 'run'").fetchone() == (1.0,)
        q = conn.execute("select quality, time from samples where signal = 'state'").fetchone()
        assert q is not None and q[0] == 1
        assert q[1] == datetime.fromtimestamp(T0 + 0.123456, tz=UTC)


async def test_results_upsert_replaces_the_window(db: str) -> None:
    first = make_result(total=1000, good=900)
    corrected = make_result(total=1200, good=1150)  # late data re-emits the same window
    other = make_result(window="15m", total=10, good=10)
    async with StorageWriter(db) as w:
        await w.write_results([first, other])
        await w.flush(10)
        await w.write_results([corrected])
        await w.flush(10)
    assert count(db, "select count(*) from oee_results") == 2
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "select total, good, oee, running_s, payload from oee_results where window_kind = 'hour'"
        ).fetchone()
    assert row is not None
    assert row[0] == 1200 and row[1] == 1150 and row[3] == 3600
    assert row[2] == pytest.approx(corrected.oee)
    assert row[4]["total"] == 1200 and row[4]["start"].endswith("Z")


async def test_a_rolling_window_keeps_one_row_and_calendar_windows_keep_their_history(db: str) -> None:
    # Every tick moves a rolling window's start: without replacing the older row, the table would gain a
    # row per window and tick. Hours are the history and stay.
    async with StorageWriter(db) as w:
        for k in range(5):
            await w.write_results([make_result(window="15m", start=T0 + k, length=900.0, total=10 + k, good=10),
                                   make_result("press-2", window="15m", start=T0 + k, length=900.0),
                                   make_result(window="hour", start=T0 + 3600 * k)])
            await w.flush(10)
        # a line with the machine's id keeps its own rolling row
        line = make_result(window="15m", start=T0 + 9, length=900.0)
        line.entity_kind = "line"
        await w.write_results([line])
        await w.flush(10)
    with psycopg.connect(db) as conn:
        rows = conn.execute("select entity, entity_kind, window_kind, extract(epoch from window_start)::float8,"
                            " total from oee_results").fetchall()
    assert sorted(rows) == sorted([("press-1", "machine", "15m", T0 + 4, 14.0), ("press-1", "line", "15m", T0 + 9, 0.0),
                                   ("press-2", "machine", "15m", T0 + 4, 0.0),
                                   *[("press-1", "machine", "hour", T0 + 3600 * k, 0.0) for k in range(5)]])


async def test_line_and_area_with_the_same_id_keep_their_own_rows(db: str) -> None:
    line = make_result("extrusion", total=100, good=100)
    line.entity_kind = "line"
    area = make_result("extrusion", total=300, good=250)
    area.entity_kind = "area"
    async with StorageWriter(db) as w:
        await w.write_results([line, area])
        await w.flush(10)
    with psycopg.connect(db) as conn:
        rows = conn.execute("select entity_kind, total from oee_results order by 1").fetchall()
    assert rows == [("area", 300.0), ("line", 100.0)]


async def test_nan_never_reaches_the_database(db: str) -> None:
    bad = make_result(total=10, good=10)
    bad.performance = math.nan
    bad.six_big_losses_s["slow_cycles"] = math.inf
    async with StorageWriter(db) as w:
        await w.write_results([bad])
        await w.flush(10)
    with psycopg.connect(db) as conn:
        row = conn.execute("select performance, payload from oee_results").fetchone()
    assert row is not None
    assert row[0] is None
    assert row[1]["performance"] is None and row[1]["six_big_losses_s"]["slow_cycles"] is None


async def test_state_intervals_keep_operator_reasons(db: str) -> None:
    async with StorageWriter(db) as w:
        await w.write_state_intervals([StateInterval("press-1", T0, None, "unplanned_stop", "unspecified", "plc")])
        await w.flush(10)
        with psycopg.connect(db, autocommit=True) as conn:  # an operator classifies the stop
            conn.execute(
                "update state_intervals set reason = 'die failure', reason_source = 'operator', comment = 'x'"
            )
        await w.write_state_intervals([StateInterval("press-1", T0, T0 + 60, "unplanned_stop", "unspecified", "plc")])
        await w.flush(10)
    with psycopg.connect(db) as conn:
        row = conn.execute("select end_time, reason, reason_source, comment from state_intervals").fetchone()
    assert row == (datetime.fromtimestamp(T0 + 60, tz=UTC), "die failure", "operator", "x")


async def test_deleting_an_interval_the_engine_no_longer_has_keeps_the_operators(db: str) -> None:
    async with StorageWriter(db) as w:
        await w.write_state_intervals([StateInterval("press-1", T0, None, "unplanned_stop", None, None),
                                       StateInterval("press-1", T0 + 60, None, "micro_stop", "jam", "operator")])
        await w.delete_state_intervals([("press-1", T0), ("press-1", T0 + 60)])
        await w.flush(10)
    with psycopg.connect(db) as conn:
        rows = conn.execute("select extract(epoch from start_time)::float8, reason from state_intervals").fetchall()
    assert rows == [(T0 + 60, "jam")]


async def test_config_and_dead_letters(db: str) -> None:
    plant = load_plant(DEMO)
    async with StorageWriter(db) as w:
        h1 = await w.record_config(plant)
        h2 = await w.record_config(plant)
        await w.write_dead_letter("payload is not JSON", "oee/v1/alu-works/press-1/total", b"\xff\x00garbage")
        await w.flush(10)
    assert h1 == h2 == plant.config_hash()
    assert count(db, "select count(*) from config_versions") == 1
    assert count(db, "select body->'site'->>'id' from config_versions") == "alu-works"
    assert count(db, "select payload from dead_letters") == b"\xff\x00garbage"


async def test_invalid_rows_are_rejected_without_blocking_the_rest(db: str) -> None:
    good = [StateInterval("press-1", T0 + i, T0 + i + 1, "running") for i in range(3)]
    bad = StateInterval("press-1", T0 + 10, None, None)  # NOT NULL time_class
    async with StorageWriter(db) as w:
        await w.write_state_intervals([*good, bad])
        await w.flush(10)
        assert w.rejected_rows == 1
        assert w.written_rows == 3
    assert count(db, "select count(*) from state_intervals") == 3


async def test_database_outage_loses_and_duplicates_nothing(pg_server: Any, fresh_db_url: str) -> None:
    migrate(fresh_db_url)
    batch1 = [Sample("caster-1", "total", T0 + i, float(i)) for i in range(50)]
    batch2 = [Sample("caster-1", "total", T0 + 100 + i, float(i)) for i in range(50)]
    async with StorageWriter(fresh_db_url, acquire_timeout_s=0.5, backoff_initial_s=0.05,
                             backoff_max_s=0.2) as w:
        await w.write_samples(batch1)
        await w.flush(10)
        await asyncio.to_thread(pg_server.stop)
        try:
            await w.write_samples(batch2)
            await w.write_results([make_result("caster-1", total=5, good=5)])
            with pytest.raises(TimeoutError):
                await w.flush(1.5)
            assert w.retries > 0
            assert w.buffered_rows == len(batch2) + 1
        finally:
            await asyncio.to_thread(pg_server.start)
        await w.write_samples(batch1)  # a replay on top
        await w.flush(30)
        assert w.dropped_rows == 0 and w.rejected_rows == 0
    assert count(fresh_db_url, "select count(*) from samples") == 100
    assert count(fresh_db_url, "select count(*) from oee_results") == 1


async def test_offer_drops_and_counts_when_the_buffer_is_full(fresh_db_url: str) -> None:
    w = StorageWriter("postgresql://nobody@127.0.0.1:1/none", max_buffered_rows=10,
                      acquire_timeout_s=0.2, backoff_initial_s=0.05)
    await w.start()
    try:
        assert w.offer_samples([Sample("press-1", "total", T0 + i, 1.0) for i in range(8)])
        assert not w.offer_samples([Sample("press-1", "total", T0 + 10 + i, 1.0) for i in range(5)])
        assert w.dropped_rows == 5
        assert w.buffered_rows == 8
    finally:
        await w.close(timeout_s=0.3)
    assert w.dropped_rows == 13  # the 8 never written are reported at close, not silently lost


# ------------------------------------------------------------------------------------------ roll-up


def test_rollup_adds_then_divides() -> None:
    # Hour 1: 3000 s running, 600 s breakdown; 1200 billets at 2 s, 1100 good.
    h1 = make_result(seconds={"running": 3000, "unplanned_stop": 600}, total=1200, good=1100, stops=2)
    # Hour 2: half an hour unscheduled, 1200 s running, 600 s changeover; 500 billets, 450 good.
    h2 = make_result(start=T0 + 3600, seconds={"unscheduled": 1800, "running": 1200, "planned_stop": 600},
                     total=500, good=450)
    r = rollup([h1.to_json(), h2.to_json()])
    ppt, run, net, total, good = 3600 + 1800, 3000 + 1200, 2 * 1700, 1700, 1550
    assert r["ppt_s"] == ppt and r["run_time_s"] == run and r["net_run_time_s"] == net
    assert r["availability"] == pytest.approx(run / ppt)
    assert r["performance"] == pytest.approx(net / run)
    assert r["quality"] == pytest.approx(good / total)
    assert r["oee"] == pytest.approx(run / ppt * net / run * good / total)
    assert r["teep"] == pytest.approx(r["oee"] * ppt / 7200)
    assert r["mtbf_s"] == pytest.approx(run / 2) and r["mttr_s"] == pytest.approx(600 / 2)
    assert r["seconds"]["unscheduled"] == 1800
    assert r["six_big_losses_s"]["planned_stops"] == 600
    assert r["start"] == h1.to_json()["start"] and r["end"] == h2.to_json()["end"]
    assert "partial_range" not in r["flags"]
    mean_oee = (h1.oee + h2.oee) / 2
    assert abs(r["oee"] - mean_oee) > 0.01  # averaging ratios would be wrong


def test_rollup_edge_cases() -> None:
    empty = rollup([], entity="press-1", start=T0, end=T0 + 3600)
    assert empty["oee"] is None and empty["availability"] is None and "no_data" in empty["flags"]
    off = rollup([make_result(seconds={"unscheduled": 3600}).to_json()])
    assert off["ppt_s"] == 0 and off["oee"] is None and off["teep"] == 0
    idle = rollup([make_result(seconds={"unplanned_stop": 3600}).to_json()])
    assert idle["oee"] == 0 and idle["quality"] is None
    fast = rollup([make_result(total=2000, good=2000).to_json()])  # 4000 s of ideal time in 3600 s
    assert fast["performance"] == pytest.approx(4000 / 3600) and "performance_over_100" in fast["flags"]
    gap = rollup([make_result().to_json()], start=T0, end=T0 + 7200)
    assert "partial_range" in gap["flags"]
    assert set(gap["six_big_losses_s"]) == set(SIX_BIG_LOSSES)


def test_requiring_timescaledb_fails_clearly_without_it(fresh_db_url: str) -> None:
    with pytest.raises(RuntimeError, match="TimescaleDB was required"):
        migrate(fresh_db_url, timescaledb=True)
    # Nothing was half-applied: the transaction rolled back, a normal start still works.
    assert migrate(fresh_db_url).applied == [m.version for m in MIGRATIONS]
