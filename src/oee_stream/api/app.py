"""The HTTP API: machines with their current state and KPIs, stored results, range roll-ups, probes.

`create_app(settings)` is a factory so tests and the CLI each get their own app and connection pool.
The pool is opened without waiting in the lifespan: the API starts (and /livez answers) while the
database is still down, and /readyz reports that until it comes back.
"""


import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import orjson
import psycopg
import structlog
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import make_asgi_app
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from oee_stream import metrics as _metrics  # noqa: F401  (registers the service's metrics for /metrics)
from oee_stream.api.models import (
    DependencyStatus,
    ErrorOut,
    KpiRecord,
    KpiSummary,
    LiveOut,
    MachineOut,
    ReadyOut,
)
from oee_stream.config import Plant
from oee_stream.storage import queries
from oee_stream.storage.writer import json_safe

log = structlog.get_logger(__name__)

CALENDAR_WINDOWS: tuple[str, ...] = ("shift", "day", "week", "hour")

_DESCRIPTION = """
Real-time OEE of the plant's machines.

* Numbers follow OEE-SEMANTICS: Availability = run time / planned production time, Performance = net run
  time / run time (not capped; values above 1 are flagged `performance_over_100`), Quality = good / total,
  OEE = A × P × Q.
* Undefined ratios (zero denominator) are `null`, never NaN and never 1.
* Times are UTC, ISO 8601. Send range bounds with an offset, e.g. `2025-03-01T06:00:00Z` or
  `2025-03-01T07:00:00+01:00`.
* Roll-ups over a range add time-class seconds and counts of the stored hourly results and then apply the
  formulas: they are never averages of ratios.
"""


@dataclass(frozen=True)
class ApiSettings:
    """What the API needs: where the database is and which plant it serves.

    `database_url` is a libpq URI or key=value conninfo; it is never logged.
    """

    database_url: str
    plant: Plant
    pool_min_size: int = 1
    pool_max_size: int = 4
    readyz_timeout_s: float = 2.0
    request_timeout_s: float = 5.0  # waiting for a pooled connection, and statement_timeout
    max_range_days: int = 400
    anonymous_read: bool = False  # GET routes without credentials (the demo); never write routes
    stream_interval_s: float = 1.0  # how often /api/v1/stream polls the database
    stream_heartbeat_s: float = 15.0  # comment line sent when nothing changed for this long


def _allowed_windows(plant: Plant) -> list[str]:
    names = [w.name for w in plant.rolling_windows]
    return names + [w for w in CALENDAR_WINDOWS if w not in names]


def _summary(stored: queries.StoredResult) -> KpiSummary:
    p = stored.payload
    return KpiSummary(
        start=p["start"],
        end=p["end"],
        computed_at=stored.computed_at,
        availability=p.get("availability"),
        performance=p.get("performance"),
        quality=p.get("quality"),
        oee=p.get("oee"),
        teep=p.get("teep"),
        coverage=p.get("coverage"),
        total=p.get("total") or 0.0,
        good=p.get("good") or 0.0,
        reject=p.get("reject") or 0.0,
        unit=p.get("unit") or "",
        flags=list(p.get("flags") or []),
    )


def _current_state(
    open_state: queries.CurrentState | None, kpis: dict[str, queries.StoredResult]
) -> tuple[str | None, str | None, datetime | str | None]:
    """(state, reason, since): the open state interval when one is stored, else what the most recently
    computed result saw (calendar windows may end in the future, so "latest end" is not "latest news")."""
    if open_state is not None:
        return open_state.state, open_state.reason, open_state.since
    if not kpis:
        return None, None, None
    newest = max(
        kpis.values(),
        key=lambda r: (r.payload.get("state") is not None, r.computed_at, r.payload.get("end") or ""),
    )
    return newest.payload.get("state"), newest.payload.get("reason"), newest.payload.get("state_since")


def _err(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def create_app(settings: ApiSettings) -> FastAPI:
    plant = settings.plant
    allowed = _allowed_windows(plant)
    machine_ids = [m.id for m in plant.machines]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            settings.database_url,
            open=False,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, int(settings.request_timeout_s)),
                "application_name": "oee-stream-api",
                # A slow query must not pin a pooled connection for ever.
                "options": f"-c statement_timeout={int(settings.request_timeout_s * 1000)}",
            },
            check=AsyncConnectionPool.check_connection,
            name="oee-api",
        )
        await pool.open(wait=False)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(
        title=f"oee-stream API — {plant.site.name or plant.site.id}",
        version="1",
        description=_DESCRIPTION,
        lifespan=lifespan,
    )

    def pool_of(request: Request) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = request.app.state.pool
        return pool

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(psycopg.OperationalError)
    async def _db_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("api_database_unavailable", path=request.url.path, error=type(exc).__name__)
        return JSONResponse(status_code=503, content={"detail": "database unavailable, try again shortly"})

    def check_machine(machine_id: str) -> None:
        if machine_id not in machine_ids:
            raise _err(404, f"unknown machine {machine_id!r}; known machines: {machine_ids}")

    @app.get("/livez", response_model=LiveOut, tags=["probes"], summary="Liveness")
    async def livez() -> LiveOut:
        """Always 200 while the process serves requests; it does not look at dependencies."""
        return LiveOut()

    @app.get(
        "/readyz",
        response_model=ReadyOut,
        tags=["probes"],
        summary="Readiness",
        responses={503: {"model": ReadyOut, "description": "A dependency does not answer."}},
    )
    async def readyz(request: Request) -> JSONResponse:
        """200 when the database answers `select 1` within the timeout, 503 otherwise."""
        try:
            async with pool_of(request).connection(timeout=settings.readyz_timeout_s) as conn:
                await conn.execute("SELECT 1")
            db = DependencyStatus(ok=True)
        except (PoolTimeout, psycopg.Error) as exc:
            db = DependencyStatus(ok=False, detail=f"{type(exc).__name__}: database did not answer")
        body = ReadyOut(ready=db.ok, dependencies={"database": db})
        return JSONResponse(status_code=200 if db.ok else 503, content=body.model_dump(mode="json"))

    @app.get(
        "/api/v1/machines",
        response_model=list[MachineOut],
        tags=["machines"],
        summary="All machines with current state and latest KPIs",
        responses={503: {"model": ErrorOut}},
    )
    async def list_machines(request: Request) -> list[MachineOut]:
        """Every machine of the plant model, in plant order, with its current state and the newest stored
        KPI result per window kind (`kpis["15m"]`, `kpis["shift"]`, …)."""
        async with pool_of(request).connection(timeout=settings.request_timeout_s) as conn:
            return await machines_now(conn)

    async def machines_now(conn: psycopg.AsyncConnection[Any]) -> list[MachineOut]:
        latest = await queries.latest_results(conn, machine_ids, allowed, entity_kind="machine")
        states = await queries.open_states(conn, machine_ids)
        out: list[MachineOut] = []
        for line in plant.lines:
            for m in line.machines:
                kpis = latest.get(m.id, {})
                state, reason, since = _current_state(states.get(m.id), kpis)
                out.append(
                    MachineOut(
                        id=m.id,
                        name=m.name,
                        line=line.id,
                        line_name=line.name,
                        area=line.area,
                        kind=m.kind.value,
                        unit=m.unit,
                        state=state,
                        reason=reason,
                        state_since=since,
                        kpis={k: _summary(v) for k, v in kpis.items()},
                    )
                )
        return out

    @app.get(
        "/api/v1/stream",
        tags=["live"],
        summary="Live updates as Server-Sent Events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "An endless event stream."}},
    )
    async def stream(
        request: Request,
        interval_s: Annotated[
            float | None,
            Query(ge=0.2, le=60, description=f"Poll interval in seconds (default {settings.stream_interval_s})."),
        ] = None,
    ) -> StreamingResponse:
        """`text/event-stream`. On connect and whenever it changes: `event: machines` with the same JSON as
        `GET /api/v1/machines`. For every machine whose state (state, reason, since) changed: `event: state`
        with `{"machine", "state", "reason", "state_since"}`. A comment line (`: keepalive`) when nothing
        was sent for a while; `: database unavailable` while the database does not answer (the stream
        stays open and resumes). Reconnect with the browser's EventSource default behaviour."""
        every = interval_s or settings.stream_interval_s
        pool = pool_of(request)

        async def events() -> AsyncIterator[str]:
            last_body: str | None = None
            last_states: dict[str, tuple[Any, ...]] = {}
            last_sent = time.monotonic()
            yield "retry: 3000\n\n"
            while not await request.is_disconnected():
                chunks: list[str] = []
                try:
                    async with pool.connection(timeout=settings.request_timeout_s) as conn:
                        machines = await machines_now(conn)
                except (PoolTimeout, psycopg.Error) as exc:
                    log.warning("stream_database_unavailable", error=type(exc).__name__)
                    chunks.append(": database unavailable\n\n")
                else:
                    body = orjson.dumps([m.model_dump(mode="json") for m in machines]).decode()
                    if body != last_body:
                        chunks.append(f"event: machines\ndata: {body}\n\n")
                        last_body = body
                    for m in machines:
                        key = (m.state, m.reason, m.state_since)
                        if last_states.get(m.id) != key:
                            last_states[m.id] = key
                            data = orjson.dumps({"machine": m.id, "state": m.state, "reason": m.reason,
                                                 "state_since": m.state_since}).decode()
                            chunks.append(f"event: state\ndata: {data}\n\n")
                now = time.monotonic()
                if not chunks and now - last_sent >= settings.stream_heartbeat_s:
                    chunks.append(": keepalive\n\n")
                if chunks:
                    last_sent = now
                    yield "".join(chunks)
                await asyncio.sleep(every)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/api/v1/machines/{machine_id}/oee",
        response_model=KpiRecord,
        response_model_exclude_none=False,
        tags=["machines"],
        summary="Latest KPI record of a window, or a roll-up over a time range",
        responses={
            404: {"model": ErrorOut, "description": "Unknown machine, or no stored result yet."},
            422: {"model": ErrorOut, "description": "Unknown window or invalid range."},
            503: {"model": ErrorOut},
        },
    )
    async def machine_oee(
        request: Request,
        machine_id: str,
        window: Annotated[
            str | None,
            Query(description=f"Window kind, one of: {', '.join(allowed)}. Omit when giving start and end."),
        ] = None,
        start: Annotated[
            datetime | None,
            Query(description="Range start, ISO 8601 with offset (e.g. 2025-03-01T06:00:00Z)."),
        ] = None,
        end: Annotated[datetime | None, Query(description="Range end (exclusive), ISO 8601 with offset.")] = None,
    ) -> dict[str, Any]:
        """Either `?window=15m` (the newest stored result of that window kind, full record) or
        `?start=…&end=…` (a roll-up of the stored hourly results lying entirely inside the range, with
        `window = "range"`; the flag `partial_range` says hours were missing)."""
        check_machine(machine_id)
        if start is None and end is None:
            if window is None:
                raise _err(422, f"give ?window= (one of {allowed}) or ?start=&end= (ISO 8601)")
            if window not in allowed:
                raise _err(422, f"unknown window {window!r}; allowed windows: {allowed}")
            async with pool_of(request).connection(timeout=settings.request_timeout_s) as conn:
                latest = await queries.latest_results(conn, [machine_id], [window], entity_kind="machine")
            stored = latest[machine_id].get(window)
            if stored is None:
                raise _err(404, f"no stored {window!r} result for machine {machine_id!r} yet")
            return dict(json_safe(stored.payload))

        if window is not None:
            raise _err(422, "give either ?window= or ?start=&end=, not both")
        if start is None or end is None:
            raise _err(422, "a range needs both start and end (ISO 8601 with offset)")
        if start.tzinfo is None or end.tzinfo is None:
            raise _err(422, "start and end need a UTC offset, e.g. 2025-03-01T06:00:00Z")
        if end <= start:
            raise _err(422, "end must be after start")
        if end - start > timedelta(days=settings.max_range_days):
            raise _err(422, f"range too long: at most {settings.max_range_days} days")
        async with pool_of(request).connection(timeout=settings.request_timeout_s) as conn:
            records = await queries.hourly_payloads(conn, machine_id, start, end)
        m = plant.machine(machine_id)
        result = queries.rollup(
            records, entity=machine_id, entity_kind="machine", start=start.timestamp(), end=end.timestamp()
        )
        if not records:
            result["unit"] = m.unit
        return dict(json_safe(result))

    # Prometheus text format of the process-wide registry (engine, writer and API metrics).
    app.mount("/metrics", make_asgi_app())

    return app
