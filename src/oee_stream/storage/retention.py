"""Retention: how long raw samples and the plant's history are kept, on both database flavors.

With TimescaleDB, `add_retention_policy` drops whole chunks older than the horizon (migration 1 adds the
policies with the defaults; `apply_timescaledb_retention` sets the configured horizons on every start).
On plain PostgreSQL there are no policies: `retention_loop` runs in the service and deletes rows older
than the horizon, table by table, in batches (short transactions, no long locks, autovacuum keeps up),
counted in `oee_retention_deleted_rows_total{table}` and logged.

On plain PostgreSQL, open state intervals (`end_time IS NULL`: the machine is in that state now) are
never deleted, however old their start: the current state of a machine is not history. A TimescaleDB
policy drops whole chunks and cannot spare a row, so there an interval still open after the history
horizon (730 days by default) goes with its chunk.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta

import psycopg
import structlog
from psycopg import sql

from oee_stream import metrics

log = structlog.get_logger(__name__)

# Table -> its time column (the hypertables' partitioning column).
TIME_COLUMNS: dict[str, str] = {"samples": "time", "connector_events": "time", "state_intervals": "start_time",
                                "oee_results": "window_start"}
_EXTRA_CONDITION: dict[str, str] = {"state_intervals": " AND end_time IS NOT NULL"}
RETENTION_LOCK_KEY = 0x0EE5_7EA2  # pg_try_advisory_lock: one instance prunes at a time


@dataclass(frozen=True)
class Retention:
    """Horizons per table; None keeps the table's rows for ever."""

    samples: timedelta | None = timedelta(days=90)
    state_intervals: timedelta | None = timedelta(days=730)
    oee_results: timedelta | None = timedelta(days=730)

    @classmethod
    def from_days(cls, samples: float, history: float) -> Retention:
        """From the service settings (days; 0 = keep for ever); history = state intervals and results."""
        def td(d: float) -> timedelta | None:
            return timedelta(days=d) if d > 0 else None

        return cls(samples=td(samples), state_intervals=td(history), oee_results=td(history))

    def horizons(self) -> dict[str, timedelta | None]:
        # Connector events go with the samples: a restarted engine reads both over the same span.
        return {"samples": self.samples, "connector_events": self.samples, "state_intervals": self.state_intervals,
                "oee_results": self.oee_results}


def prune(conninfo: str, retention: Retention, *, batch_size: int = 10_000, pause_s: float = 0.0,
          max_seconds: float | None = None) -> dict[str, int]:
    """Delete rows older than the horizons (plain PostgreSQL), in batches of `batch_size` rows, each its own
    transaction; returns rows deleted per table. Skips the run when another process holds the retention
    lock. `max_seconds` bounds one run (the rest waits for the next)."""
    deleted: dict[str, int] = {}
    started = time.monotonic()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK_KEY,)).fetchone()
        if not got or not got[0]:
            log.info("retention_skipped", why="another process is pruning")
            return deleted
        try:
            for table, horizon in retention.horizons().items():
                if horizon is None:
                    continue
                col = TIME_COLUMNS[table]
                # ctid batches: each DELETE is short and touches at most batch_size rows.
                q = sql.SQL(
                    "DELETE FROM {t} WHERE ctid = ANY(ARRAY("
                    "SELECT ctid FROM {t} WHERE {c} < now() - %s" + _EXTRA_CONDITION.get(table, "") +
                    " LIMIT %s))"
                ).format(t=sql.Identifier(table), c=sql.Identifier(col))
                n = 0
                t0 = time.monotonic()
                while True:
                    cur = conn.execute(q, (horizon, batch_size))
                    n += cur.rowcount
                    metrics.RETENTION_DELETED.labels(table=table).inc(cur.rowcount)
                    if cur.rowcount < batch_size:
                        break
                    if max_seconds is not None and time.monotonic() - started > max_seconds:
                        break
                    if pause_s:
                        time.sleep(pause_s)
                deleted[table] = n
                if n:
                    log.info("retention_deleted", table=table, rows=n, older_than_days=horizon.days,
                             seconds=round(time.monotonic() - t0, 3))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK_KEY,))
    metrics.RETENTION_LAST_RUN.set(time.time())
    return deleted


async def retention_loop(conninfo: str, retention: Retention, *, every_s: float = 3600.0,
                         batch_size: int = 10_000) -> None:
    """Prune now and then every `every_s` until cancelled (plain PostgreSQL; a thread does the I/O)."""
    while True:
        try:
            await asyncio.to_thread(prune, conninfo, retention, batch_size=batch_size, pause_s=0.01,
                                    max_seconds=max(60.0, every_s / 2))
        except psycopg.Error as exc:
            log.warning("retention_failed", error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                        if str(exc) else type(exc).__name__)
        await asyncio.sleep(every_s)


def apply_timescaledb_retention(conninfo: str, retention: Retention) -> None:
    """Set the configured horizons as the hypertables' retention policies (TimescaleDB 2.x): the policy of
    each table is replaced (remove_retention_policy + add_retention_policy, both documented 2.x API), or
    removed for a table kept for ever."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for table, horizon in retention.horizons().items():
            with conn.transaction():
                conn.execute("SELECT remove_retention_policy(%s::regclass, if_exists => true)", (table,))
                if horizon is not None:
                    conn.execute("SELECT add_retention_policy(%s::regclass, drop_after => %s::interval)",
                                 (table, horizon))
            log.info("retention_policy_set", table=table, drop_after_days=horizon.days if horizon else None)
