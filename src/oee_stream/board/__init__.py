"""The andon board: a full-screen page for a floor TV at `/board`.

Everything the page needs (HTML, JS, CSS) ships inside this package and is served by `board_router`;
nothing comes from a CDN, so the board works on a plant network without internet access.

The page reads `GET /api/v1/machines` (polled every second by default, `?poll=2` for two seconds) and
switches to Server-Sent Events when the API advertises `/api/v1/stream` in its OpenAPI document: every
event then triggers an immediate refresh. `GET /board/config.json` gives it the site name and each
machine's OEE target (`target_oee` set with `PUT /api/v1/admin/config/targets`, else the machine's
`target_oee` in the plant model, else 85 %, the world-class benchmark) and ideal speed.

Include it in an app with ``app.include_router(board_router(plant))``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg
import structlog
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from psycopg_pool import PoolTimeout

from oee_stream.config import Plant
from oee_stream.storage import edits

__all__ = ["DEFAULT_TARGET_OEE", "STATIC_FILES", "board_router"]

# The world-class OEE benchmark (Nakajima), used for machines without `target_oee` in the plant model.
DEFAULT_TARGET_OEE = 0.85

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# The page is small and changes with a release: the TV reloads it cheaply, and never runs stale code
# for long after an upgrade.
_CACHE = {"Cache-Control": "no-cache"}
# The board asks for its settings once per page load: a slow database must not keep the TV blank.
_TARGETS_TIMEOUT_S = 2.0
log = structlog.get_logger(__name__)


def _static_dir() -> Any:
    return resources.files(__package__).joinpath("static")


STATIC_FILES: tuple[str, ...] = tuple(
    sorted(p.name for p in _static_dir().iterdir() if p.is_file() and not p.name.startswith("."))
)


def board_config(plant: Plant | None, poll_ms: int = 1000) -> dict[str, Any]:
    """What the page needs from the plant model beyond the API's machine listing."""
    machines: dict[str, Any] = {}
    if plant is not None:
        for m in plant.machines:
            product = m.products[m.first_product]
            machines[m.id] = {
                "target_oee": m.target_oee if m.target_oee is not None else DEFAULT_TARGET_OEE,
                "ideal_per_h": 3600.0 / product.ideal_seconds_per_unit,
                "unit": m.unit,
            }
    return {
        "site": (plant.site.name or plant.site.id) if plant is not None else "",
        "timezone": plant.site.timezone if plant is not None else "UTC",
        "default_target_oee": DEFAULT_TARGET_OEE,
        "poll_ms": poll_ms,
        "machines": machines,
    }


def board_router(plant: Plant | None = None, *, poll_ms: int = 1000) -> APIRouter:
    """Routes `/board`, `/board/static/{file}` and `/board/config.json`.

    `plant` supplies the OEE targets and ideal speeds; without it every machine gets the 85 % target.
    `poll_ms` is how often the page polls the API when no event stream is available.
    """
    router = APIRouter(tags=["board"])
    cfg = board_config(plant, poll_ms)

    @router.get("/board", response_class=HTMLResponse, include_in_schema=False)
    async def board_page() -> Response:
        body = _static_dir().joinpath("index.html").read_bytes()
        return Response(body, media_type=_MEDIA_TYPES[".html"], headers=_CACHE)

    @router.get("/board/static/{name}", include_in_schema=False)
    async def board_static(name: str) -> Response:
        # Only the files shipped in the package, by exact name: no paths, no traversal.
        if name not in STATIC_FILES:
            raise HTTPException(status_code=404, detail=f"no board file {name!r}")
        suffix = name[name.rfind("."):]
        body = _static_dir().joinpath(name).read_bytes()
        return Response(body, media_type=_MEDIA_TYPES.get(suffix, "application/octet-stream"), headers=_CACHE)

    @router.get("/board/config.json", summary="Andon board settings: site name, OEE targets, ideal speeds")
    async def board_settings(request: Request) -> JSONResponse:
        targets = await _configured_targets(request)
        if not targets:
            return JSONResponse(cfg, headers=_CACHE)
        machines = {m: {**v, "target_oee": targets.get(m, v["target_oee"])} for m, v in cfg["machines"].items()}
        return JSONResponse({**cfg, "machines": machines}, headers=_CACHE)

    return router


async def _configured_targets(request: Request) -> dict[str, float]:
    """`target_oee` by machine from the API configuration, when the board runs inside the API app (its
    connection pool is `app.state.pool`); empty otherwise or while the database does not answer, so the
    board still starts, with the plant file's targets."""
    pool = getattr(request.app.state, "pool", None)
    if pool is None:
        return {}
    try:
        async with pool.connection(timeout=_TARGETS_TIMEOUT_S) as conn:
            cfg = await edits.latest_config(conn, "targets")
    except (PoolTimeout, psycopg.Error) as exc:
        log.warning("board_targets_unavailable", error=type(exc).__name__)
        return {}
    if cfg is None:
        return {}
    return {m: float(v["target_oee"]) for m, v in cfg[1].items() if v.get("target_oee") is not None}
