"""The HTTP API: machines with their current state and KPIs, stored results, range roll-ups, probes.

`create_app(settings)` is a factory so tests and the CLI each get their own app and connection pool.
The pool is opened without waiting in the lifespan: the API starts (and /livez answers) while the
database is still down, and /readyz reports that until it comes back.
"""


import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import psycopg
import structlog
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import make_asgi_app
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from oee_stream import metrics as _metrics  # noqa: F401  (registers the service's metrics for /metrics)
from oee_stream.api import admin, operator, reads
from oee_stream.api import timeutil as tu
from oee_stream.api.auth import AccessMiddleware, KeyVerifier
from oee_stream.api.cache import LiveCache
from oee_stream.api.deps import CALENDAR_WINDOWS, Ctx, allowed_windows
from oee_stream.api.models import (
    DependencyStatus,
    ErrorOut,
    LiveOut,
    MachineOut,
    ReadyOut,
)
from oee_stream.config import Plant
from oee_stream.storage import queries
from oee_stream.storage.writer import configure_connection

log = structlog.get_logger(__name__)

__all__ = ["CALENDAR_WINDOWS", "ApiSettings", "create_app", "live_cache_for"]

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
    pool_min_size: int = 2
    pool_max_size: int = 8  # range/report queries; the live routes and key checks need no connection
    readyz_timeout_s: float = 2.0
    request_timeout_s: float = 5.0  # waiting for a pooled connection, and statement_timeout
    max_range_days: int = 400
    anonymous_read: bool = False  # GET routes without credentials (the demo); never write or admin routes
    max_body_bytes: int = 64 * 1024  # request bodies above this get 413
    reason_tree: Mapping[str, Sequence[str]] | None = None  # category -> reasons; else from state tables
    # Verified keys are remembered this long; a revocation is applied at once in this process and within a
    # live-cache refresh in other API processes, so this bounds it only where neither applies.
    key_cache_ttl_s: float = 30.0
    stream_interval_s: float = 1.0  # how often /api/v1/stream looks for changes (in the live cache when fresh)
    stream_heartbeat_s: float = 15.0  # comment line sent when nothing changed for this long
    # Live cache (api/cache.py): refreshed from the database every cache_refresh_s (0 = no cache: every
    # live read queries the database); used only while its last refresh is at most cache_stale_after_s old.
    cache_refresh_s: float = 1.0
    cache_stale_after_s: float = 5.0
    pool_check_idle_s: float = 10.0  # a pooled connection idle longer than this is checked before use


def live_cache_for(settings: ApiSettings) -> LiveCache:
    """The cache `create_app(settings, cache=…)` uses; build it first to feed it from a StorageWriter
    (`writer.add_listener(cache.on_written)`), as `oee-stream run` does."""
    return LiveCache(settings.plant, allowed_windows(settings.plant), refresh_s=settings.cache_refresh_s or 1.0,
                     stale_after_s=settings.cache_stale_after_s)


class _IdleCheck:
    """Pool check that costs a round trip only for a connection that sat idle for a while (a server
    restart is noticed there); one returned moments ago is used as it is. A connection that breaks in
    use is discarded by the pool and the request answers 503 once."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.returned: dict[int, float] = {}

    async def reset(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.returned[id(conn)] = time.monotonic()

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        at = self.returned.pop(id(conn), None)
        if conn.closed or conn.broken:
            raise psycopg.OperationalError("connection closed")
        if at is None or time.monotonic() - at > self.idle_s:
            await AsyncConnectionPool.check_connection(conn)


_ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
_COMMON_RESPONSES: dict[str, str] = {
    "401": "No API key, or an invalid or revoked one (header `WWW-Authenticate: Bearer`).",
    "403": "The key's role is too low for this route (viewer < operator < admin).",
    "503": "Database unavailable; retry shortly.",
}


def _document_common_responses(spec: dict[str, Any]) -> None:
    """Declare what every route can answer besides its own responses: 401/403 from access control, 413
    from the body limit, 503 while the database is down, and 422 in both shapes (FastAPI's validation
    errors with a list, this API's own parameter errors with a message)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    if "ErrorOut" not in schemas:
        schemas["ErrorOut"] = ErrorOut.model_json_schema()
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            if path == "/livez":
                op["security"] = []
                continue
            responses = op["responses"]
            for code, text in _COMMON_RESPONSES.items():
                responses.setdefault(code, {"description": text,
                                            "content": {"application/json": {"schema": _ERROR_REF}}})
            if method in ("put", "post", "patch"):
                responses.setdefault("413", {"description": "Request body too large (64 KiB by default).",
                                             "content": {"application/json": {"schema": _ERROR_REF}}})
            r422 = responses.get("422")
            if r422 is not None:
                content = r422.setdefault("content", {}).setdefault("application/json", {})
                current = content.get("schema")
                if current is not None and current != _ERROR_REF and "anyOf" not in current:
                    content["schema"] = {"anyOf": [current, _ERROR_REF]}
                elif current is None:
                    content["schema"] = _ERROR_REF


class LiveFastPath:
    """`GET /api/v1/machines/{id}/oee?window=W` answered straight from the live cache (pure ASGI, after
    the access check): the same bytes, status and headers the route would send, without FastAPI's routing
    and parameter handling. Anything else — another parameter, `tz`, `week`, a stale cache, nothing stored
    yet — goes to the route as usual."""

    PREFIX = "/api/v1/machines/"

    def __init__(self, app: Any, *, ctx: Ctx) -> None:
        self.app = app
        self.ctx = ctx
        self.windows = {w for w in ctx.allowed_windows if w != "week"}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            qs: bytes = scope.get("query_string", b"")
            if path.startswith(self.PREFIX) and path.endswith("/oee") and qs.startswith(b"window=") \
                    and b"&" not in qs and b"%" not in qs and b"+" not in qs:
                machine = path[len(self.PREFIX):-4]
                window = qs[7:].decode("latin-1")
                live = self.ctx.live() if window in self.windows and machine in self.ctx.members_machine else None
                cached = live.result("machine", machine, window) if live is not None else None
                if cached is not None and live is not None:
                    live.fast_path_hits += 1
                    body = cached.json()
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [(b"content-length", str(len(body)).encode()),
                                            (b"content-type", b"application/json")]})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)


def create_app(settings: ApiSettings, *, cache: LiveCache | None = None) -> FastAPI:
    plant = settings.plant
    allowed = allowed_windows(plant)
    machine_ids = [m.id for m in plant.machines]
    if cache is None and settings.cache_refresh_s > 0:
        cache = live_cache_for(settings)
    verifier = KeyVerifier(settings.key_cache_ttl_s)
    ctx = Ctx(settings=settings, plant=plant, allowed_windows=allowed, cache=cache, verifier=verifier)
    idle_check = _IdleCheck(settings.pool_check_idle_s)

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
            check=idle_check.check,
            reset=idle_check.reset,
            configure=configure_connection,
            name="oee-api",
        )
        await pool.open(wait=False)
        app.state.pool = pool
        # Everything built so far (app, routes, models, plant) lives as long as the process: move it out of
        # the collector's reach so full collections stay short (they were the API's latency spikes).
        gc.collect()
        gc.freeze()
        app.state.cache = cache
        refresher = None
        if cache is not None:
            refresher = asyncio.create_task(
                cache.run(pool, timeout_s=settings.request_timeout_s, verifier=verifier), name="oee-api-live-cache")
        try:
            yield
        finally:
            if refresher is not None and cache is not None:
                cache.stop()
                refresher.cancel()
                # Bounded, and a cancellation of the lifespan itself meanwhile is not swallowed.
                await asyncio.wait({refresher}, timeout=5)
            await pool.close()

    app = FastAPI(
        title=f"oee-stream API — {plant.site.name or plant.site.id}",
        version="1",
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.verifier = verifier
    app.state.cache = cache

    def pool_of(request: Request) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = request.app.state.pool
        return pool

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(psycopg.OperationalError)
    async def _db_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("api_database_unavailable", path=request.url.path, error=type(exc).__name__)
        return JSONResponse(status_code=503, content={"detail": "database unavailable, try again shortly"})

    @app.exception_handler(psycopg.DataError)
    async def _bad_value(request: Request, exc: psycopg.DataError) -> JSONResponse:
        # A value the database cannot represent (out-of-range number or time): the request's fault.
        msg = str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
        return JSONResponse(status_code=422, content={"detail": f"invalid value: {msg}"})

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
        live = ctx.live()
        if live is not None:
            return machines_of(live.latest("machine", machine_ids, allowed), live.open_states(machine_ids))
        async with pool_of(request).connection(timeout=settings.request_timeout_s) as conn:
            return await machines_now(conn)

    async def machines_now(conn: psycopg.AsyncConnection[Any]) -> list[MachineOut]:
        latest = await queries.latest_results(conn, machine_ids, allowed, entity_kind="machine")
        states = await queries.open_states(conn, machine_ids)
        return machines_of(latest, states)

    def machines_of(latest: dict[str, dict[str, queries.StoredResult]],
                    states: dict[str, queries.CurrentState]) -> list[MachineOut]:
        out: list[MachineOut] = []
        for line in plant.lines:
            for m in line.machines:
                kpis = latest.get(m.id, {})
                state, reason, since = reads.current_state(states.get(m.id), kpis)
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
                        kpis={k: reads.summary(v) for k, v in kpis.items()},
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
                live = ctx.live()
                try:
                    if live is not None:
                        machines = machines_of(live.latest("machine", machine_ids, allowed),
                                               live.open_states(machine_ids))
                    else:
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
                            # UTC with `Z`, as in `machines` events and GET /api/v1/machines.
                            data = orjson.dumps({"machine": m.id, "state": m.state, "reason": m.reason,
                                                 "state_since": tu.fmt(m.state_since, None)}).decode()
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

    reads.register(app, ctx)
    operator.register(app, ctx)
    admin.register(app, ctx)

    # Prometheus text format of the process-wide registry (engine, writer and API metrics).
    app.mount("/metrics", make_asgi_app())

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            spec.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <api key>"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            spec["security"] = [{"bearer": []}, {"apiKey": []}]
            _document_common_responses(spec)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Inside the access check: the hot read of boards and MES skips routing when the cache can answer it.
    app.add_middleware(LiveFastPath, ctx=ctx)
    app.add_middleware(
        AccessMiddleware,
        pool=lambda: app.state.pool,
        anonymous_read=settings.anonymous_read,
        max_body_bytes=settings.max_body_bytes,
        timeout_s=settings.request_timeout_s,
        verifier=verifier,
    )
    return app
