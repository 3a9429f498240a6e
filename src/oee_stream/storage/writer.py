"""Buffered async writer: samples, KPI results, state intervals, config versions and dead letters.

Every write is idempotent (samples: COPY into a temp table, then INSERT ... ON CONFLICT DO NOTHING;
everything else an upsert keyed by its natural key, dead letters by an id fixed before the first
attempt). That is what makes the retry loop safe: when a commit's acknowledgement is lost with the
connection, writing the batch again cannot duplicate a row.

Rows wait in a bounded in-memory buffer and a single background task flushes them in order. While the
database is down the head batch is retried with capped exponential backoff and stays in the buffer, so
nothing is lost; producers that `await write_*()` are held back when the buffer is full (back-pressure
reaches the MQTT client, which leaves messages with the broker), while `offer_samples()` never waits
and counts what it had to drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import psycopg
import structlog
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool

from oee_stream.bus import Sample
from oee_stream.config import CALENDAR_WINDOWS, Plant
from oee_stream.engine.result import TIME_CLASSES, KpiResult
from oee_stream.storage.schema import OEE_RESULT_COLUMNS, QUALITY_CODES, to_utc

log = structlog.get_logger(__name__)

Kind = Literal["samples", "events", "results", "intervals", "interval_deletes", "configs", "dead_letters"]

# Called after a batch of results or state intervals is committed, with the rows as the database now holds
# them (RETURNING of the upsert: a result row the database kept because it was newer is not in the list;
# an interval row carries the operator's reason the upsert preserved). See `StorageWriter.add_listener`.
WrittenListener = Callable[[Kind, list[tuple[Any, ...]]], None]


@dataclass(frozen=True, slots=True)
class StateInterval:
    """A period a machine spent in one time class; `end` is None while the interval is open."""

    machine: str
    start: float  # UTC epoch seconds
    end: float | None
    time_class: str
    reason: str | None = None
    reason_source: str | None = None  # plc | rule | operator
    comment: str | None = None


async def configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Pool `configure` hook: jsonb is parsed with orjson (several times faster than json.loads)."""
    set_json_loads(orjson.loads, conn)


def _finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None if x is None else float(x)
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf by None recursively: JSON has no NaN and jsonb rejects it, and the API promises
    `null` for undefined ratios."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def sample_row(s: Sample) -> tuple[Any, ...]:
    v = s.value
    value: float | None
    text: str | None = None
    if isinstance(v, str):
        value = None
        text = v
    else:
        value = _finite(v)
    return (to_utc(s.ts), s.machine, s.signal, value, text, QUALITY_CODES.get(s.quality, 2))


def result_row(r: KpiResult, computed_at: datetime) -> tuple[Any, ...]:
    payload = json_safe(r.to_json())
    seconds = {f"{c}_s": _finite(r.seconds.get(c, 0.0)) or 0.0 for c in TIME_CLASSES}
    values: dict[str, Any] = {
        "entity": r.entity,
        "entity_kind": r.entity_kind,
        "window_kind": r.window,
        "window_start": to_utc(r.start),
        "window_end": to_utc(r.end),
        "computed_at": computed_at,
        "availability": _finite(r.availability),
        "performance": _finite(r.performance),
        "quality": _finite(r.quality),
        "oee": _finite(r.oee),
        "teep": _finite(r.teep),
        "utilization": _finite(r.utilization),
        "coverage": _finite(r.coverage),
        "total": _finite(r.total) or 0.0,
        "good": _finite(r.good) or 0.0,
        "reject": _finite(r.reject) or 0.0,
        **seconds,
        "ppt_s": _finite(r.ppt_s) or 0.0,
        "run_time_s": _finite(r.run_time_s) or 0.0,
        "net_run_time_s": _finite(r.net_run_time_s) or 0.0,
        "fully_productive_s": _finite(r.fully_productive_s) or 0.0,
        "stops": int(r.stops),
        "mtbf_s": _finite(r.mtbf_s),
        "mttr_s": _finite(r.mttr_s),
        "flags": list(r.flags),
        "config_hash": r.config_hash,
        "payload": Jsonb(payload),
    }
    return tuple(values[c] for c in OEE_RESULT_COLUMNS)


def interval_row(i: StateInterval) -> tuple[Any, ...]:
    return (
        i.machine,
        to_utc(i.start),
        to_utc(i.end) if i.end is not None else None,
        i.time_class,
        i.reason,
        i.reason_source,
        i.comment,
    )


# ------------------------------------------------------------------------------------------ SQL

_SAMPLES_TEMP = """
CREATE TEMP TABLE IF NOT EXISTS samples_in (
    time timestamptz NOT NULL, machine_id text NOT NULL, signal text NOT NULL,
    value double precision, text_value text, quality smallint NOT NULL
) ON COMMIT DELETE ROWS
"""
_SAMPLES_COPY = (
    "COPY samples_in (time, machine_id, signal, value, text_value, quality) FROM STDIN (FORMAT BINARY)"
)
_SAMPLES_TYPES = ["timestamptz", "text", "text", "float8", "text", "int2"]
_SAMPLES_MERGE = """
INSERT INTO samples (time, machine_id, signal, value, text_value, quality)
SELECT time, machine_id, signal, value, text_value, quality FROM samples_in
ON CONFLICT (machine_id, signal, time) DO NOTHING
"""

_RESULT_KEY = ("entity", "entity_kind", "window_kind", "window_start")
_RESULTS_UPSERT = (
    f"INSERT INTO oee_results ({', '.join(OEE_RESULT_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(OEE_RESULT_COLUMNS))}) "
    f"ON CONFLICT ({', '.join(_RESULT_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in OEE_RESULT_COLUMNS if c not in _RESULT_KEY)
    # A recomputed window replaces the stored one; a stale copy (e.g. a second writer replaying an
    # older computation) must not overwrite a newer one.
    + " WHERE oee_results.computed_at <= EXCLUDED.computed_at"
)
RESULTS_RETURNING = ("entity", "entity_kind", "window_kind", "window_start", "window_end", "computed_at", "payload")
_RESULTS_UPSERT_RETURNING = _RESULTS_UPSERT + " RETURNING " + ", ".join(RESULTS_RETURNING)

# A rolling window's row is keyed by its start, which moves with every tick: the newest row of each
# (entity, window) replaces the older ones, or the table would gain a row per window and tick (GBs a day).
# Calendar windows (hour, shift, day) keep one row per period: they are the history.
_ROLLING_PRUNE = """
DELETE FROM oee_results o
USING unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[]) AS n(entity, entity_kind, window_kind, window_start)
WHERE o.entity = n.entity AND o.entity_kind = n.entity_kind AND o.window_kind = n.window_kind
  AND o.window_start < n.window_start
"""
_RK = [OEE_RESULT_COLUMNS.index(c) for c in ("entity", "entity_kind", "window_kind", "window_start")]


def _rolling_prune_args(rows: list[tuple[Any, ...]]) -> tuple[list[Any], ...] | None:
    newest: dict[tuple[Any, ...], Any] = {}
    for row in rows:
        e, ek, wk, ws = (row[i] for i in _RK)
        if wk not in CALENDAR_WINDOWS and ((e, ek, wk) not in newest or ws > newest[(e, ek, wk)]):
            newest[(e, ek, wk)] = ws
    if not newest:
        return None
    keys = list(newest)
    return ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [newest[k] for k in keys])


# An operator's reason/comment survives the engine closing or re-emitting the interval, and so does the
# end of an event an operator split in two (end_locked).
_INTERVALS_UPSERT = """
INSERT INTO state_intervals (machine_id, start_time, end_time, time_class, reason, reason_source, comment)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (machine_id, start_time) DO UPDATE SET
    end_time = CASE WHEN state_intervals.end_locked THEN state_intervals.end_time ELSE EXCLUDED.end_time END,
    time_class = EXCLUDED.time_class,
    reason = CASE WHEN state_intervals.reason_source = 'operator'
                       AND EXCLUDED.reason_source IS DISTINCT FROM 'operator'
                  THEN state_intervals.reason ELSE EXCLUDED.reason END,
    reason_source = CASE WHEN state_intervals.reason_source = 'operator'
                              AND EXCLUDED.reason_source IS DISTINCT FROM 'operator'
                         THEN state_intervals.reason_source ELSE EXCLUDED.reason_source END,
    comment = COALESCE(EXCLUDED.comment, state_intervals.comment)
"""
# An interval the engine no longer has (its machine was derived again from the log and its rows moved)
# would otherwise stay, and an open one would grow for ever. An interval an operator split or coded is
# the operator's and stays.
_INTERVALS_DELETE = """
DELETE FROM state_intervals WHERE machine_id = %s AND start_time = %s
  AND NOT end_locked AND reason_source IS DISTINCT FROM 'operator'
"""
INTERVALS_RETURNING = ("machine_id", "start_time", "end_time", "time_class", "reason")
_INTERVALS_UPSERT_RETURNING = _INTERVALS_UPSERT.rstrip() + " RETURNING " + ", ".join(INTERVALS_RETURNING)

_CONFIG_INSERT = """
INSERT INTO config_versions (config_hash, body) VALUES (%s, %s) ON CONFLICT (config_hash) DO NOTHING
"""

_EVENTS_INSERT = """
INSERT INTO connector_events (time, machine_id, connector, state, session) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""

_DEAD_LETTER_INSERT = """
INSERT INTO dead_letters (id, received_at, reason, topic, payload) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (id) DO NOTHING
"""


# Data errors are a property of the rows, not of the database's health: retrying cannot help, so such
# rows are isolated and rejected. Everything else (connection lost, pool timeout, server restarting,
# schema not migrated yet) is retried until it succeeds.
_POISON_ERRORS: tuple[type[BaseException], ...] = (psycopg.DataError, psycopg.IntegrityError)


@dataclass
class _Batch:
    kind: Kind
    rows: list[tuple[Any, ...]]


class StorageWriter:
    """Buffered, retrying, idempotent writer. Use as `async with StorageWriter(url) as w: ...`.

    Counters (plain attributes, for the metrics layer): `written_rows`, `retries` (failed flush
    attempts), `dropped_rows` (rows not accepted by `offer_samples` or still buffered when `close`
    gave up), `rejected_rows` (rows the database refused as invalid), plus `buffered_rows`.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        max_buffered_rows: int = 200_000,
        batch_size: int = 5_000,
        flush_interval_s: float = 0.25,
        pool_min_size: int = 1,
        pool_max_size: int = 2,
        acquire_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 15.0,
    ) -> None:
        if max_buffered_rows < 1 or batch_size < 1:
            raise ValueError("max_buffered_rows and batch_size must be >= 1")
        self.max_buffered_rows = max_buffered_rows
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.acquire_timeout_s = acquire_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            conninfo,
            open=False,
            min_size=pool_min_size,
            max_size=pool_max_size,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(acquire_timeout_s))},
            check=AsyncConnectionPool.check_connection,
            configure=configure_connection,
            name="oee-writer",
        )
        self.written_rows = 0
        self.retries = 0
        self.dropped_rows = 0
        self.rejected_rows = 0
        self.last_error: str | None = None
        self._buffer: deque[_Batch] = deque()
        self._buffered = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._closing = False
        self._listeners: list[WrittenListener] = []

    def add_listener(self, listener: WrittenListener) -> None:
        """Call `listener(kind, rows)` after every committed batch of `results` or `intervals`.

        Rows are what the upsert returned (columns `RESULTS_RETURNING` / `INTERVALS_RETURNING`), so an
        in-memory copy fed from here equals the database. The listener runs on the writer's task and must
        be quick and not raise (exceptions are logged and swallowed)."""
        self._listeners.append(listener)

    def _notify(self, kind: Kind, rows: list[tuple[Any, ...]]) -> None:
        for fn in self._listeners:
            try:
                fn(kind, rows)
            except Exception:
                log.exception("storage_listener_failed", kind=kind)

    # --------------------------------------------------------------------------------- lifecycle

    @property
    def buffered_rows(self) -> int:
        return self._buffered

    async def start(self) -> None:
        if self._task is not None:
            return
        # wait=False: a database that is down at start-up is the retry loop's business, not fatal.
        await self.pool.open(wait=False)
        self._task = asyncio.create_task(self._run(), name="oee-storage-writer")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is buffered (up to `timeout_s`), then stop; rows left over are counted as dropped."""
        if self._task is None:
            await self.pool.close()
            return
        try:
            await self.flush(timeout_s)
        except TimeoutError:
            left = self._buffered
            self.dropped_rows += left
            log.error("storage_writer_closed_with_buffered_rows", rows=left, last_error=self.last_error)
        self._closing = True
        task, self._task = self._task, None
        task.cancel()
        try:
            # Bounded, and a cancellation of the caller meanwhile is passed on, never swallowed.
            await asyncio.wait({task}, timeout=5)
        finally:
            await self.pool.close()

    async def __aenter__(self) -> StorageWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything buffered so far is in the database (TimeoutError after `timeout_s`)."""
        if self._task is None:
            await self.start()
        self._wake.set()
        async with asyncio.timeout(timeout_s):
            await self._empty.wait()

    # ----------------------------------------------------------------------------------- writing

    async def write_samples(self, samples: Sequence[Sample]) -> None:
        await self._put("samples", [sample_row(s) for s in samples])

    def offer_samples(self, samples: Sequence[Sample]) -> bool:
        """Buffer without waiting; when the buffer is full the samples are dropped and counted."""
        rows = [sample_row(s) for s in samples]
        if self._buffered and self._buffered + len(rows) > self.max_buffered_rows:
            self.dropped_rows += len(rows)
            return False
        self._append("samples", rows)
        return True

    async def write_connector_events(self, events: Iterable[tuple[str, float, str, str, str]]) -> None:
        """(machine, time the engine applied it, connector, online | offline, session) rows."""
        await self._put("events", [(to_utc(ts), m, c, st, ses) for m, ts, c, st, ses in events])

    async def write_results(self, results: Iterable[KpiResult]) -> None:
        now = datetime.now(tz=UTC)
        await self._put("results", [result_row(r, now) for r in results])

    async def write_state_intervals(self, intervals: Iterable[StateInterval]) -> None:
        await self._put("intervals", [interval_row(i) for i in intervals])

    async def delete_state_intervals(self, keys: Iterable[tuple[str, float]]) -> None:
        """Remove the engine's intervals (machine, start) it no longer emits; queued in order with the
        writes, so a delete never overtakes the upsert of the same interval."""
        await self._put("interval_deletes", [(m, to_utc(start)) for m, start in keys])

    async def record_config(self, plant: Plant) -> str:
        """Store the validated plant model under its hash (results carry the hash); returns the hash."""
        h = plant.config_hash()
        await self._put("configs", [(h, Jsonb(plant.model_dump(mode="json", by_alias=True)))])
        return h

    async def write_dead_letter(
        self,
        reason: str,
        topic: str | None,
        payload: bytes | str | None,
        received_at: float | None = None,
    ) -> uuid.UUID:
        dl_id = uuid.uuid4()
        raw = payload.encode("utf-8", "replace") if isinstance(payload, str) else payload
        when = to_utc(received_at if received_at is not None else time.time())
        await self._put("dead_letters", [(dl_id, when, reason, topic, raw)])
        return dl_id

    # ----------------------------------------------------------------------------------- reading

    async def operator_reasons(self, since: float, timeout_s: float = 1.0) -> list[tuple[str, float, float | None, str]]:
        """Downtime events an operator gave a reason, ending after `since`: (machine, start, end or None
        while still open, reason), for the engine to book their stop seconds under those reasons."""
        async with self.pool.connection(timeout=timeout_s) as conn:
            cur = await conn.execute(
                "SELECT machine_id, extract(epoch FROM start_time)::float8, extract(epoch FROM end_time)::float8,"
                " reason FROM state_intervals WHERE reason_source = 'operator' AND reason IS NOT NULL"
                " AND (end_time IS NULL OR end_time > %s) ORDER BY machine_id, start_time",
                (to_utc(since),))
            return [(str(m), float(a), None if b is None else float(b), str(r)) for m, a, b, r in await cur.fetchall()]

    async def _put(self, kind: Kind, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self._task is None:
            await self.start()
        # A batch larger than the whole buffer is still accepted once the buffer is empty, otherwise
        # the caller would wait forever.
        while self._buffered and self._buffered + len(rows) > self.max_buffered_rows:
            self._space.clear()
            await self._space.wait()
        self._append(kind, rows)

    def _append(self, kind: Kind, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        self._buffer.append(_Batch(kind, rows))
        self._buffered += len(rows)
        self._empty.clear()
        if self._buffered >= self.batch_size:
            self._wake.set()

    # -------------------------------------------------------------------------------- flush loop

    def _take(self) -> tuple[Kind, list[tuple[Any, ...]], int]:
        """Merge consecutive head batches of one kind up to batch_size; they stay buffered until written."""
        kind = self._buffer[0].kind
        rows: list[tuple[Any, ...]] = []
        n = 0
        for b in self._buffer:
            if b.kind != kind or (rows and len(rows) + len(b.rows) > self.batch_size):
                break
            rows.extend(b.rows)
            n += 1
        return kind, rows, n

    def _done(self, n: int, rows: int) -> None:
        for _ in range(n):
            self._buffer.popleft()
        self._buffered -= rows
        self._space.set()
        if not self._buffer:
            self._empty.set()

    async def _run(self) -> None:
        delay = self.backoff_initial_s
        while True:
            if not self._buffer:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval_s):
                        await self._wake.wait()
                continue
            kind, rows, n = self._take()
            rejected = 0
            try:
                await self._write(kind, rows)
            except _POISON_ERRORS as exc:
                rejected = await self._write_one_by_one(kind, rows, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.retries += 1
                self.last_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
                log.warning("storage_write_failed", kind=kind, rows=len(rows), retry_in_s=round(delay, 2),
                            error=self.last_error, retries=self.retries)
                await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
                delay = min(delay * 2, self.backoff_max_s)
                continue
            delay = self.backoff_initial_s
            self.written_rows += len(rows) - rejected
            self._done(n, len(rows))

    async def _write_one_by_one(self, kind: Kind, rows: list[tuple[Any, ...]], first: BaseException) -> int:
        """Write a refused batch row by row so one bad row cannot block the rest; returns rows rejected."""
        log.warning("storage_batch_rejected_isolating_rows", kind=kind, rows=len(rows),
                    error=str(first).strip().splitlines()[0])
        rejected = 0
        for row in rows:
            while True:
                try:
                    await self._write(kind, [row])
                    break
                except _POISON_ERRORS as exc:
                    self.rejected_rows += 1
                    rejected += 1
                    log.error("storage_row_rejected", kind=kind, error=str(exc).strip().splitlines()[0])
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.retries += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    await asyncio.sleep(self.backoff_initial_s)
        return rejected

    async def _write(self, kind: Kind, rows: list[tuple[Any, ...]]) -> None:
        written: list[tuple[Any, ...]] = []
        async with self.pool.connection(timeout=self.acquire_timeout_s) as conn:
            async with conn.transaction():
                cur = conn.cursor()
                if kind == "samples":
                    await cur.execute(_SAMPLES_TEMP)
                    async with cur.copy(_SAMPLES_COPY) as copy:
                        copy.set_types(_SAMPLES_TYPES)
                        for row in rows:
                            await copy.write_row(row)
                    await cur.execute(_SAMPLES_MERGE)
                elif kind in ("results", "intervals") and self._listeners:
                    q = _RESULTS_UPSERT_RETURNING if kind == "results" else _INTERVALS_UPSERT_RETURNING
                    await cur.executemany(q, rows, returning=True)
                    while True:
                        written.extend(await cur.fetchall())
                        if not cur.nextset():
                            break
                elif kind == "results":
                    await cur.executemany(_RESULTS_UPSERT, rows)
                elif kind == "intervals":
                    await cur.executemany(_INTERVALS_UPSERT, rows)
                elif kind == "interval_deletes":
                    await cur.executemany(_INTERVALS_DELETE, rows)
                elif kind == "configs":
                    await cur.executemany(_CONFIG_INSERT, rows)
                elif kind == "events":
                    await cur.executemany(_EVENTS_INSERT, rows)
                else:
                    await cur.executemany(_DEAD_LETTER_INSERT, rows)
                if kind == "results" and (prune := _rolling_prune_args(rows)) is not None:
                    await cur.execute(_ROLLING_PRUNE, prune)
        # Committed (the transaction block has exited): now the rows may be shown as the database's.
        if written:
            self._notify(kind, written)
