"""Retention on plain PostgreSQL: the service's job deletes what is older than the horizon, in batches."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta

import psycopg
import pytest

from oee_stream import metrics
from oee_stream.bus import Sample
from oee_stream.storage.retention import Retention, prune, retention_loop
from oee_stream.storage.writer import StateInterval, StorageWriter
from test_storage import make_result

DAY = 86400.0


async def _seed(db: str, now: float) -> None:
    async with StorageWriter(db) as w:
        await w.write_samples([Sample("press-1", "total", now - d * DAY - i, float(i))
                               for d in (1, 100, 200) for i in range(5)])
        # connector events go with the samples (a restarted engine reads both back)
        await w.write_connector_events([("press-1", now - d * DAY, "c1", "online", "s") for d in (1, 100)])
        await w.write_results([make_result("press-1", "hour", now - d * DAY - (now % 3600)) for d in (1, 800, 900)])
        await w.write_state_intervals([
            StateInterval("press-1", now - 900 * DAY, now - 899 * DAY, "unplanned_stop", "old"),  # deleted
            StateInterval("caster-1", now - 800 * DAY, None, "planned_stop", "still open"),  # kept: current state
            StateInterval("press-1", now - DAY, None, "running"),
        ])
        await w.flush(10)


def _counts(db: str) -> dict[str, int]:
    with psycopg.connect(db) as conn:
        return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
                for t in ("samples", "connector_events", "oee_results", "state_intervals")}


def _deleted_metric(table: str) -> float:
    return metrics.RETENTION_DELETED.labels(table=table)._value.get()


async def test_prune_deletes_rows_older_than_the_horizons_in_batches(db: str) -> None:
    now = time.time()
    await _seed(db, now)
    assert _counts(db) == {"samples": 15, "connector_events": 2, "oee_results": 3, "state_intervals": 3}
    before = _deleted_metric("samples")
    got = prune(db, Retention(samples=timedelta(days=90), state_intervals=timedelta(days=730),
                              oee_results=timedelta(days=730)), batch_size=3)
    assert got == {"samples": 10, "connector_events": 1, "state_intervals": 1, "oee_results": 2}
    assert _counts(db) == {"samples": 5, "connector_events": 1, "oee_results": 1, "state_intervals": 2}
    assert _deleted_metric("samples") - before == 10
    with psycopg.connect(db) as conn:
        left = conn.execute("SELECT machine_id, reason FROM state_intervals ORDER BY 1").fetchall()
    assert left == [("caster-1", "still open"), ("press-1", None)]
    # Nothing more to delete; a table kept for ever is not touched.
    assert prune(db, Retention(samples=None, state_intervals=None, oee_results=timedelta(days=2)),
                 batch_size=3) == {"oee_results": 0}


async def test_retention_loop_runs_in_the_service(db: str) -> None:
    now = time.time()
    await _seed(db, now)
    task = asyncio.create_task(retention_loop(db, Retention.from_days(90, 0), every_s=3600))
    try:
        async with asyncio.timeout(30):
            for _ in range(300):
                if _counts(db)["samples"] == 5:
                    break
                await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert _counts(db) == {"samples": 5, "connector_events": 1, "oee_results": 3,
                           "state_intervals": 3}  # history kept (0 = for ever)


def test_retention_from_settings() -> None:
    r = Retention.from_days(30, 0)
    assert r.samples == timedelta(days=30) and r.oee_results is None and r.state_intervals is None
    with pytest.raises(ValueError):
        from oee_stream.settings import Settings

        Settings(retention_samples_days=-1)
