"""In-memory copy of what the live routes read: the newest stored result per entity and window kind, and
the newest state interval per machine.

The live routes (`/api/v1/machines`, `/machines/{id}/oee?window=…`, `/entities/{id}/oee?window=…`,
`/plant`, `/stream`) are polled by boards and MES systems many times a second; answering them from memory
instead of from two LATERAL queries keeps their latency in the sub-millisecond range while ingest runs.

Two ways keep the copy equal to the database:

* **fed** — when the API runs in the same process as the engine (`oee-stream run`), `on_written` is
  registered with `StorageWriter.add_listener`: after every committed batch the writer hands over the rows
  its upsert RETURNED, i.e. exactly what the database now holds (a result the database refused as older is
  not among them; an interval carries the operator reason the upsert preserved). Operator edits made
  through this API are applied the same way.
* **refreshed** — a background task (`run`) polls the database every `refresh_s` (1 s): first only the key
  columns of the newest rows (cheap), then the payloads of the rows that changed. This picks up writes of
  other processes (a split-out API, a second writer, SQL) and heals any race with the feed.

Newer wins: a result replaces the cached one when its (window_end, window_start, computed_at) is not
older — the order of `queries.latest_results` — and an interval when its start is not older. A refresh
replaces every entry that was not fed while it ran. The routes use the copy only while it is fresh (a
refresh succeeded within `stale_after_s`); otherwise they query the database as before, so an API whose
database is gone answers 503, never silently stale numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from oee_stream import metrics
from oee_stream.config import Plant
from oee_stream.storage import queries
from oee_stream.storage.writer import json_safe

if TYPE_CHECKING:
    from oee_stream.api.auth import KeyVerifier

log = structlog.get_logger(__name__)
_CHUNK = 250  # entries applied between two turns of the event loop


@dataclass(slots=True)
class CachedResult:
    stored: queries.StoredResult
    window_start: datetime
    window_end: datetime
    seq: int
    body: bytes | None = None  # the KpiRecord JSON of this result in UTC, made on first use

    @property
    def stamp(self) -> queries.ResultStamp:
        return (self.window_start, self.window_end, self.stored.computed_at)

    def order(self) -> tuple[datetime, datetime, datetime]:
        return (self.window_end, self.window_start, self.stored.computed_at)

    def json(self) -> bytes:
        """The body `GET …/oee?window=` answers (same bytes FastAPI's serializer writes for KpiRecord)."""
        if self.body is None:
            from oee_stream.api.models import KpiRecord

            self.body = KpiRecord.model_validate(json_safe(self.stored.payload)).model_dump_json(by_alias=True).encode()
        return self.body


@dataclass(frozen=True, slots=True)
class CachedInterval:
    start: datetime
    end: datetime | None
    time_class: str
    reason: str | None
    seq: int


@dataclass
class LiveCache:
    plant: Plant
    window_kinds: Sequence[str]
    refresh_s: float = 1.0
    stale_after_s: float = 5.0
    results: dict[queries.ResultKey, CachedResult] = field(default_factory=dict)
    intervals: dict[str, CachedInterval] = field(default_factory=dict)
    refreshed_at: float | None = None  # time.monotonic() of the last successful refresh
    version: int = 0  # bumped whenever something visible changed (the stream compares it)
    refreshes: int = 0
    refresh_failures: int = 0
    fed_rows: int = 0
    fast_path_hits: int = 0  # requests answered by app.LiveFastPath
    _seq: int = 0
    _entities: list[tuple[str, str]] = field(default_factory=list)
    _tracked: set[tuple[str, str]] = field(default_factory=set)
    _machines: list[str] = field(default_factory=list)
    _stop: asyncio.Event | None = None

    def __post_init__(self) -> None:
        p = self.plant
        ents = [("machine", m.id) for m in p.machines]
        ents += [("line", li.id) for li in p.lines]
        ents += [("area", a) for a in sorted({li.area for li in p.lines})]
        ents.append(("site", p.site.id))
        self._entities = ents
        self._tracked = set(ents)
        self._machines = [m.id for m in p.machines]
        self.window_kinds = list(self.window_kinds)

    # ------------------------------------------------------------------------------------ reading

    def fresh(self) -> bool:
        return self.refreshed_at is not None and time.monotonic() - self.refreshed_at <= self.stale_after_s

    def result(self, entity_kind: str, entity: str, window_kind: str) -> CachedResult | None:
        return self.results.get((entity_kind, entity, window_kind))

    def latest(self, entity_kind: str, entities: Iterable[str],
               window_kinds: Sequence[str]) -> dict[str, dict[str, queries.StoredResult]]:
        """What `queries.latest_results(conn, entities, window_kinds, entity_kind=…)` answers."""
        out: dict[str, dict[str, queries.StoredResult]] = {}
        for e in entities:
            row: dict[str, queries.StoredResult] = {}
            for w in window_kinds:
                c = self.results.get((entity_kind, e, w))
                if c is not None:
                    row[w] = c.stored
            out[e] = row
        return out

    def open_states(self, machines: Iterable[str]) -> dict[str, queries.CurrentState]:
        """What `queries.open_states(conn, machines)` answers."""
        out: dict[str, queries.CurrentState] = {}
        for m in machines:
            i = self.intervals.get(m)
            if i is not None and i.end is None:
                out[m] = queries.CurrentState(i.time_class, i.reason, i.start)
        return out

    # ------------------------------------------------------------------------------------ feeding

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def on_written(self, kind: str, rows: list[tuple[Any, ...]]) -> None:
        """`StorageWriter` listener: rows as RETURNED by the committed upsert."""
        if kind == "results":
            self.apply_results(rows)
        elif kind == "intervals":
            self.apply_intervals(rows)
        metrics.API_CACHE_FED_ROWS.inc(len(rows))

    def apply_results(self, rows: Iterable[Sequence[Any]]) -> None:
        """Rows (entity, entity_kind, window_kind, window_start, window_end, computed_at, payload) that
        are in the database now."""
        changed = False
        for entity, ekind, wk, ws, we, ca, payload in rows:
            if (ekind, entity) not in self._tracked or wk not in self.window_kinds:
                continue
            key = (ekind, entity, wk)
            cur = self.results.get(key)
            if cur is not None and (we, ws, ca) < cur.order():
                continue
            self.results[key] = CachedResult(queries.StoredResult(entity, wk, ca, payload), ws, we, self._next())
            changed = True
            self.fed_rows += 1
        if changed:
            self.version += 1

    def apply_intervals(self, rows: Iterable[Sequence[Any]]) -> None:
        """Rows (machine_id, start_time, end_time, time_class, reason) that are in the database now."""
        changed = False
        for machine, start, end, tc, reason in rows:
            if ("machine", machine) not in self._tracked:
                continue
            cur = self.intervals.get(machine)
            if cur is not None and start < cur.start:
                continue
            self.intervals[machine] = CachedInterval(start, end, tc, reason, self._next())
            changed = True
            self.fed_rows += 1
        if changed:
            self.version += 1

    # ---------------------------------------------------------------------------------- refreshing

    async def refresh(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Bring the copy up to date with the database. Applied entry by entry, a chunk at a time with the
        event loop served in between (thousands of keys must not hold up requests): each entry is always
        a row state the database had, and an entry fed while this ran (seq > seq0) is newer than this
        snapshot and is kept."""
        seq0 = self._seq
        stamps = await queries.latest_result_stamps(conn, self._entities, self.window_kinds)
        need: list[tuple[str, str, str, datetime]] = []
        for i, ((k, e, w), stamp) in enumerate(stamps.items()):
            cur = self.results.get((k, e, w))
            if cur is None or cur.stamp != stamp:
                need.append((k, e, w, stamp[0]))
            if i % _CHUNK == _CHUNK - 1:
                await asyncio.sleep(0)
        fetched = await queries.results_by_key(conn, need)
        latest_iv = await queries.latest_intervals(conn, self._machines)
        changed = False
        for i, (entity, ekind, wk, ws, we, ca, payload) in enumerate(fetched):
            key = (ekind, entity, wk)
            cur = self.results.get(key)
            if cur is None or cur.seq <= seq0:
                self.results[key] = CachedResult(queries.StoredResult(entity, wk, ca, payload), ws, we, self._next())
                changed = True
            if i % _CHUNK == _CHUNK - 1:
                await asyncio.sleep(0)
        # Gone from the database (retention, a deleted row): dropped unless fed meanwhile.
        for key in [k for k, c in self.results.items() if k not in stamps and c.seq <= seq0]:
            del self.results[key]
            changed = True
        seen: set[str] = set()
        for machine, start, end, tc, reason in latest_iv:
            seen.add(machine)
            cur_i = self.intervals.get(machine)
            if cur_i is None or (cur_i.seq <= seq0 and (cur_i.start, cur_i.end, cur_i.time_class, cur_i.reason)
                                 != (start, end, tc, reason)):
                self.intervals[machine] = CachedInterval(start, end, tc, reason, self._next())
                changed = True
        for machine in [m for m, c in self.intervals.items() if m not in seen and c.seq <= seq0]:
            del self.intervals[machine]
            changed = True
        if changed:
            self.version += 1
        self.refreshes += 1
        self.refreshed_at = time.monotonic()
        metrics.API_CACHE_REFRESHED.set(time.time())

    async def run(self, pool: AsyncConnectionPool[Any], *, timeout_s: float = 5.0,
                  verifier: KeyVerifier | None = None) -> None:
        """Refresh every `refresh_s` until cancelled; also polls API-key revocations for `verifier`."""
        failing = False
        self._stop = stop = asyncio.Event()
        while not stop.is_set():
            try:
                async with pool.connection(timeout=timeout_s) as conn:
                    await self.refresh(conn)
                    if verifier is not None:
                        await verifier.poll_revocations(conn)
                if failing:
                    log.info("live_cache_refresh_recovered")
                failing = False
            except (PoolTimeout, psycopg.Error) as exc:
                # psycopg turns a cancellation during a query into QueryCanceled: stop, do not retry.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                self.refresh_failures += 1
                metrics.API_CACHE_REFRESH_FAILURES.inc()
                if not failing:
                    log.warning("live_cache_refresh_failed", error=type(exc).__name__)
                failing = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_s):
                    await stop.wait()

    def stop(self) -> None:
        """End `run` (also when a cancellation was swallowed by a library on the way)."""
        if self._stop is not None:
            self._stop.set()
