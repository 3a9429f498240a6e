"""Operator workflows: set or change the reason of a downtime event, split an event, comment.

Reasons are checked against the reason tree (category -> reasons). Time that was running (or outside
planned production) is never turned into downtime: such edits get 409. Every change is audited.
"""

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from oee_stream.api import timeutil as tu
from oee_stream.api.auth import ANONYMOUS, Principal
from oee_stream.api.deps import Ctx
from oee_stream.api.models import DowntimeEvent, ErrorOut
from oee_stream.storage import edits

tu_tz = Annotated[str | None, Query(description="Zone for times without offset and in the answer (UTC, plant, +02:00).")]


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=200, description="A reason of the reason tree.")
    category: str | None = Field(default=None, max_length=200,
                                 description="Its category; optional when the reason is in one category only.")
    comment: str | None = Field(default=None, max_length=2000, description="Free text, e.g. what was done.")


class SplitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: str = Field(description="Where to split, ISO 8601 instant strictly inside the event.")
    first: ReasonIn = Field(default_factory=ReasonIn, description="Reason/comment of [start, at); empty keeps the original.")
    second: ReasonIn = Field(description="Reason/comment of [at, end).")


class SplitOut(BaseModel):
    first: DowntimeEvent
    second: DowntimeEvent


class ReasonTreeOut(BaseModel):
    source: str = Field(description="api_config vN, settings, or plant state tables.")
    categories: dict[str, list[str]]


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut}, 403: {"model": ErrorOut},
    404: {"model": ErrorOut, "description": "Unknown machine or no event starts at `start`."},
    409: {"model": ErrorOut, "description": "The event is running time (never downtime), or still open (split)."},
    422: {"model": ErrorOut, "description": "Reason not in the reason tree, or invalid time."},
}


def principal_of(request: Request) -> Principal:
    p = request.scope.get("state", {}).get("principal")
    return p if isinstance(p, Principal) else ANONYMOUS


def _event(row: dict[str, Any], tz: Any) -> DowntimeEvent:
    s = datetime.fromisoformat(row["start_time"])
    e = datetime.fromisoformat(row["end_time"]) if row["end_time"] else None
    return DowntimeEvent(machine=row["machine_id"], start=tu.fmt(s, tz), end=tu.fmt(e, tz),
                         duration_s=(e.timestamp() if e else time.time()) - s.timestamp(),
                         time_class=row["time_class"], reason=row["reason"], reason_category=row["reason_category"],
                         reason_source=row["reason_source"], comment=row["comment"])


def _feed_cache(ctx: Ctx, rows: list[dict[str, Any]]) -> None:
    """Committed edits go into the live cache at once (the current state of a machine shows the reason)."""
    if ctx.cache is None:
        return
    ctx.cache.apply_intervals([
        (r["machine_id"], datetime.fromisoformat(r["start_time"]),
         datetime.fromisoformat(r["end_time"]) if r["end_time"] else None, r["time_class"], r["reason"])
        for r in rows])


def _check_reason(tree: dict[str, list[str]], r: ReasonIn) -> str | None:
    """The category of r.reason (validated); None when no reason is given."""
    if r.reason is None:
        if r.category is not None:
            raise HTTPException(422, "a category needs a reason")
        return None
    if r.category is not None:
        if r.category not in tree:
            raise HTTPException(422, f"unknown category {r.category!r}; allowed: {sorted(tree)}")
        if r.reason not in tree[r.category]:
            raise HTTPException(422, f"reason {r.reason!r} is not in category {r.category!r}; "
                                     f"allowed: {tree[r.category]}")
        return r.category
    cats = [c for c, reasons in tree.items() if r.reason in reasons]
    if not cats:
        raise HTTPException(422, f"unknown reason {r.reason!r} for this machine; allowed: {tree}")
    if len(cats) > 1:
        raise HTTPException(422, f"reason {r.reason!r} is in categories {cats}; give `category`")
    return cats[0]


def register(app: FastAPI, ctx: Ctx) -> None:
    StartPath = Annotated[str, Path(description="The event's start, ISO 8601 with offset (URL-encode the '+').")]

    @app.get("/api/v1/reason-tree", response_model=ReasonTreeOut, tags=["operator"],
             summary="Reasons an operator may choose, by category",
             responses={404: {"model": ErrorOut, "description": "Unknown machine."}})
    async def reason_tree(
        request: Request,
        machine: Annotated[str | None, Query(description="Only the reasons this machine's events accept (its "
                                                         "state table's, when the tree comes from the plant).")] = None,
    ) -> ReasonTreeOut:
        m = ctx.machine(machine) if machine is not None else None
        async with ctx.connection(request) as conn:
            tree, source = await ctx.reason_tree(conn, m)
        return ReasonTreeOut(source=source, categories=tree)

    @app.put("/api/v1/downtime/{machine_id}/{start}", response_model=DowntimeEvent, tags=["operator"],
             summary="Set or change the reason and/or comment of a downtime event (operator)", responses=ERRORS)
    async def put_reason(request: Request, machine_id: str, start: StartPath, body: ReasonIn,
                         tz: tu_tz = None) -> DowntimeEvent:
        """The event is found by machine and exact start. The reason must be in the reason tree
        (GET /api/v1/reason-tree). Running time can never become downtime: 409. Audited."""
        m = ctx.machine(machine_id)
        zone = tu.zone(tz, ctx.plant.site.timezone)
        s = tu.instant(start, "start", zone)
        assert s is not None
        if body.reason is None and body.comment is None:
            raise HTTPException(422, "give a reason, a comment, or both")
        async with ctx.connection(request) as conn:
            tree, _ = await ctx.reason_tree(conn, m)
            category = _check_reason(tree, body)
            try:
                row = await edits.set_reason(conn, principal_of(request).actor, machine_id, s,
                                             reason=body.reason, category=category, comment=body.comment)
            except edits.EditError as exc:
                raise HTTPException(exc.status, str(exc)) from None
        _feed_cache(ctx, [row])
        return _event(row, zone)

    @app.post("/api/v1/downtime/{machine_id}/{start}/split", response_model=SplitOut, tags=["operator"],
              summary="Split a downtime event in two with different reasons (operator)", responses=ERRORS)
    async def split(request: Request, machine_id: str, start: StartPath, body: SplitIn,
                    tz: tu_tz = None) -> SplitOut:
        """[start, at) and [at, end) keep the time class; each gets its own reason/comment. Only ended
        events can be split (409 while open); the engine will not move the split point later. Audited."""
        m = ctx.machine(machine_id)
        zone = tu.zone(tz, ctx.plant.site.timezone)
        s = tu.instant(start, "start", zone)
        at = tu.instant(body.at, "at", zone)
        assert s is not None and at is not None
        async with ctx.connection(request) as conn:
            tree, _ = await ctx.reason_tree(conn, m)
            c1, c2 = _check_reason(tree, body.first), _check_reason(tree, body.second)
            try:
                a, b = await edits.split(
                    conn, principal_of(request).actor, machine_id, s, at,
                    first={"reason": body.first.reason, "category": c1, "comment": body.first.comment},
                    second={"reason": body.second.reason, "category": c2, "comment": body.second.comment})
            except edits.EditError as exc:
                raise HTTPException(exc.status, str(exc)) from None
        _feed_cache(ctx, [a, b])
        return SplitOut(first=_event(a, zone), second=_event(b, zone))

