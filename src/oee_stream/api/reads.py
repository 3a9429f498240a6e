"""Read routes: plant tree, KPIs of any entity and window, series, shift report, losses, downtime, CSV.

Everything over a range is a roll-up of stored `hour` rows (seconds and counts added, formulas applied
once, OEE-SEMANTICS section 4); series and reports use the stored `hour`/`shift`/`day` rows, which the
engine aligns to the plant's local boundaries.
"""


import csv
import io
import time
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import Response

from oee_stream.api import timeutil as tu
from oee_stream.api.deps import ENTITY_KINDS, Ctx
from oee_stream.api.models import (
    DowntimeEvent,
    DowntimeOut,
    ErrorOut,
    KpiRecord,
    KpiSummary,
    LossesOut,
    LossItem,
    PlantArea,
    PlantLine,
    PlantMachine,
    PlantOut,
    PlantSite,
    SeriesOut,
    ShiftHour,
    ShiftReportOut,
)
from oee_stream.engine.calendar import (
    CAL_PRODUCTION,
    calendar_boundaries,
    local_floor,
    local_next,
    shift_instances,
)
from oee_stream.engine.result import SIX_BIG_LOSSES, TIME_CLASSES
from oee_stream.storage import queries
from oee_stream.storage.writer import json_safe

DOWNTIME_CLASSES = ("planned_stop", "unplanned_stop", "micro_stop", "unknown")
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown entity, or nothing stored yet."},
    422: {"model": ErrorOut, "description": "Invalid parameter; the message lists what is allowed."},
    503: {"model": ErrorOut, "description": "Database unavailable."},
}

TzParam = Annotated[
    str | None,
    Query(description="Zone for bounds without offset and for times in the answer: UTC, plant, an IANA zone, "
                      "or an offset like +02:00. Default: bounds must carry an offset; answer in UTC."),
]
KindParam = Annotated[
    str | None, Query(description="machine | line | area | site; needed only when a line and an area share the id.")
]
StartParam = Annotated[str | None, Query(description="Range start, ISO 8601 (2025-03-01T06:00:00Z), or a date.")]
EndParam = Annotated[str | None, Query(description="Range end (exclusive), ISO 8601, or a date.")]
LimitParam = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
MAX_OFFSET = 1_000_000_000
OffsetParam = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")]


def summary(stored: queries.StoredResult) -> KpiSummary:
    p = stored.payload
    return KpiSummary(
        start=p["start"], end=p["end"], computed_at=stored.computed_at,
        availability=p.get("availability"), performance=p.get("performance"), quality=p.get("quality"),
        oee=p.get("oee"), teep=p.get("teep"), coverage=p.get("coverage"),
        total=p.get("total") or 0.0, good=p.get("good") or 0.0, reject=p.get("reject") or 0.0,
        unit=p.get("unit") or "", flags=list(p.get("flags") or []),
    )


def current_state(
    open_state: queries.CurrentState | None, kpis: dict[str, queries.StoredResult]
) -> tuple[str | None, str | None, datetime | None]:
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
    since = newest.payload.get("state_since")
    since_dt = datetime.fromisoformat(since.replace("Z", "+00:00")) if isinstance(since, str) else None
    return newest.payload.get("state"), newest.payload.get("reason"), since_dt


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _missing(records: list[dict[str, Any]], start: float, until: float) -> bool:
    """Whether stored records leave part of [start, until) uncovered."""
    covered = 0.0
    for r in records:
        s, e = _epoch(r["start"]), _epoch(r["end"])
        covered += max(0.0, min(e, until) - max(s, start))
    return until - start - covered > 1e-6


def _page_next(offset: int, n: int, total: int) -> int | None:
    return offset + n if offset + n < total else None


def register(app: FastAPI, ctx: Ctx) -> None:
    plant = ctx.plant
    settings = ctx.settings
    site_zone = plant.site.timezone

    def tzp(tz: str | None) -> tzinfo | None:
        return tu.zone(tz, site_zone)

    async def rollup_range(request: Request, kind: str, eid: str, start: datetime, end: datetime,
                           window: str = "range", due_until: float | None = None) -> dict[str, Any]:
        """The roll-up of the stored hours inside [start, end). `due_until`: hours after it lie in the
        future, so only [start, due_until) counts when deciding whether hours are missing."""
        async with ctx.connection(request) as conn:
            records = await queries.hourly_payloads(conn, eid, start, end, entity_kind=kind)
        result = queries.rollup(records, entity=eid, entity_kind=kind, start=start.timestamp(),
                                end=end.timestamp(), window=window)
        if due_until is not None and records:
            result["flags"] = [f for f in result["flags"] if f != "partial_range"]
            if _missing(records, start.timestamp(), due_until):
                result["flags"] = sorted([*result["flags"], "partial_range"])
        if not records and kind == "machine":
            result["unit"] = plant.machine(eid).unit
        # No single configuration produced the numbers (nothing stored, or several): say so with null.
        result["config_hash"] = result["config_hash"] or None
        return dict(json_safe(result))

    async def entity_oee(request: Request, kind: str, eid: str, window: str | None, start_s: str | None,
                         end_s: str | None, tz: str | None) -> dict[str, Any] | Response:
        zone = tzp(tz)
        if start_s is None and end_s is None:
            if window is None:
                raise HTTPException(422, f"give ?window= (one of {ctx.allowed_windows}) or ?start=&end= (ISO 8601)")
            if window not in ctx.allowed_windows:
                raise HTTPException(422, f"unknown window {window!r}; allowed windows: {ctx.allowed_windows}")
            if window == "week":
                tzn = ctx.tz_name(kind, eid)
                ws = local_floor(time.time(), tzn, "week")
                we = local_next(ws, tzn, "week")
                # The week is in progress: the hours still to come (and the current one) are not
                # "missing"; past hours without a stored row are.
                rec = await rollup_range(request, kind, eid, datetime.fromtimestamp(ws, UTC),
                                         datetime.fromtimestamp(we, UTC), window="week",
                                         due_until=local_floor(time.time(), tzn, "hour"))
                return tu.localize(rec, zone)
            live = ctx.live()
            if live is not None:
                cached = live.result(kind, eid, window)
                if cached is None:
                    raise HTTPException(404, f"no stored {window!r} result for {kind} {eid!r} yet")
                if zone is None or zone is UTC:
                    # The hot path of boards and MES polling: bytes serialized once per stored result.
                    return Response(cached.json(), media_type="application/json")
                return tu.localize(dict(json_safe(cached.stored.payload)), zone)
            async with ctx.connection(request) as conn:
                latest = await queries.latest_results(conn, [eid], [window], entity_kind=kind)
            stored = latest[eid].get(window)
            if stored is None:
                raise HTTPException(404, f"no stored {window!r} result for {kind} {eid!r} yet")
            return tu.localize(dict(json_safe(stored.payload)), zone)
        if window is not None:
            raise HTTPException(422, "give either ?window= or ?start=&end=, not both")
        start, end = tu.check_range(tu.instant(start_s, "start", zone), tu.instant(end_s, "end", zone),
                                    settings.max_range_days)
        return tu.localize(await rollup_range(request, kind, eid, start, end), zone)

    oee_doc = (
        "Either `?window=` — the newest stored result of that window kind (rolling windows, `shift`, `day`, "
        "`hour`), or `week`: the roll-up of this local week's stored hours — or `?start=&end=`: a roll-up of "
        "the stored hourly results lying entirely inside the range (`window = \"range\"`; the flag "
        "`partial_range` says hours were missing). Roll-ups add seconds and counts, then divide."
    )

    @app.get("/api/v1/machines/{machine_id}/oee", response_model=KpiRecord, tags=["machines"],
             summary="KPIs of a machine: latest result of a window, or a roll-up over a range",
             responses=ERRORS, description=oee_doc)
    async def machine_oee(
        request: Request, machine_id: str,
        window: Annotated[str | None, Query(description=f"One of: {', '.join(ctx.allowed_windows)}.")] = None,
        start: StartParam = None, end: EndParam = None, tz: TzParam = None,
    ) -> dict[str, Any] | Response:
        ctx.machine(machine_id)
        return await entity_oee(request, "machine", machine_id, window, start, end, tz)

    @app.get("/api/v1/entities/{entity_id}/oee", response_model=KpiRecord, tags=["entities"],
             summary="KPIs of a machine, line, area or the site", responses=ERRORS, description=oee_doc)
    async def any_oee(
        request: Request, entity_id: str, kind: KindParam = None,
        window: Annotated[str | None, Query(description=f"One of: {', '.join(ctx.allowed_windows)}.")] = None,
        start: StartParam = None, end: EndParam = None, tz: TzParam = None,
    ) -> dict[str, Any] | Response:
        k, eid = ctx.entity(entity_id, kind)
        return await entity_oee(request, k, eid, window, start, end, tz)

    @app.get("/api/v1/entities/{entity_id}/series", response_model=SeriesOut, tags=["entities"],
             summary="Time series of stored hour, shift or day results", responses=ERRORS)
    async def series(
        request: Request, entity_id: str,
        start: StartParam = None, end: EndParam = None,
        bucket: Annotated[str, Query(description="hour | shift | day (plant-local boundaries)")] = "hour",
        kind: KindParam = None, tz: TzParam = None, limit: LimitParam = 100, offset: OffsetParam = 0,
    ) -> SeriesOut:
        """Buckets whose start lies in [start, end), oldest first; the newest may still be in progress
        (its seconds cover the time until it was computed)."""
        k, eid = ctx.entity(entity_id, kind)
        if bucket not in ("hour", "shift", "day"):
            raise HTTPException(422, f"unknown bucket {bucket!r}; allowed: hour, shift, day")
        zone = tzp(tz)
        s, e = tu.check_range(tu.instant(start, "start", zone), tu.instant(end, "end", zone), settings.max_range_days)
        async with ctx.connection(request) as conn:
            page = await queries.results_in_range(conn, k, [eid], bucket, s, e, inside=False, limit=limit,
                                                  offset=offset)
        items = [KpiRecord.model_validate(tu.localize(dict(json_safe(p)), zone)) for _, p in page.rows]
        return SeriesOut(entity=eid, entity_kind=k, bucket=bucket, items=items,  # type: ignore[arg-type]
                         total=page.total, limit=limit, offset=offset,
                         next_offset=_page_next(offset, len(items), page.total))

    @app.get("/api/v1/entities/{entity_id}/losses", response_model=LossesOut, tags=["entities"],
             summary="Loss Pareto: six big losses and downtime by reason over a range", responses=ERRORS)
    async def losses(
        request: Request, entity_id: str, start: StartParam = None, end: EndParam = None,
        kind: KindParam = None, tz: TzParam = None,
    ) -> LossesOut:
        """`six_big_losses`: sums of the entity's stored hourly results lying inside [start, end).
        `downtime_by_reason`: stop seconds (planned, unplanned and micro stops) of its machines' downtime
        events overlapping [start, end), clipped to the range (an open event counts until now), by their
        final reason — an operator's reason (PUT /api/v1/downtime/…) replaces the PLC's or the rule's, split
        events count per part, events without a reason are `unspecified`. Both sorted descending."""
        k, eid = ctx.entity(entity_id, kind)
        zone = tzp(tz)
        s, e = tu.check_range(tu.instant(start, "start", zone), tu.instant(end, "end", zone), settings.max_range_days)
        async with ctx.connection(request) as conn:
            own = await queries.hourly_payloads(conn, eid, s, e, entity_kind=k)
            by_reason = await queries.downtime_by_reason(conn, ctx.members[(k, eid)], s, e)
        r = queries.rollup(own, entity=eid, entity_kind=k, start=s.timestamp(), end=e.timestamp())

        def items(d: dict[str, float]) -> list[LossItem]:
            tot = sum(v for v in d.values() if v > 0)
            return [LossItem(name=n, seconds=v, share=(v / tot if tot > 0 else None))
                    for n, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))]

        six = {n: float(r["six_big_losses_s"].get(n) or 0.0) for n in SIX_BIG_LOSSES}
        return LossesOut(entity=eid, entity_kind=k, start=tu.fmt(s, zone), end=tu.fmt(e, zone),
                         ppt_s=r["ppt_s"], records=r["records"], six_big_losses=items(six),
                         downtime_by_reason=items(by_reason), flags=r["flags"])

    @app.get("/api/v1/plant", response_model=PlantOut, tags=["plant"],
             summary="Plant tree with current states and latest KPIs", responses={503: ERRORS[503]})
    async def plant_tree(
        request: Request, tz: TzParam = None,
        windows: Annotated[str | None, Query(description="Comma-separated window kinds to include "
                                                          "(default: all stored ones).")] = None,
    ) -> PlantOut:
        zone = tzp(tz)
        stored_kinds = [w for w in ctx.allowed_windows if w != "week"]
        wins = [w for w in (windows.split(",") if windows else stored_kinds) if w]
        bad = [w for w in wins if w not in stored_kinds]
        if bad:
            raise HTTPException(422, f"unknown windows {bad}; allowed: {stored_kinds}")
        now = time.time()
        areas = sorted({line.area for line in plant.lines})
        ids = {"machine": ctx.machine_ids, "line": [li.id for li in plant.lines], "area": areas,
               "site": [plant.site.id]}
        live = ctx.live()
        if live is not None:
            latest = {k: live.latest(k, v, wins) for k, v in ids.items()}
            states = live.open_states(ctx.machine_ids)
        else:
            async with ctx.connection(request) as conn:
                latest = {k: await queries.latest_results(conn, v, wins, entity_kind=k) for k, v in ids.items()}
                states = await queries.open_states(conn, ctx.machine_ids)

        def kpis(kind: str, eid: str) -> dict[str, KpiSummary]:
            out = {}
            for w, v in latest[kind].get(eid, {}).items():
                sm = summary(v)
                if zone is not None:
                    sm = sm.model_copy(update={"start": sm.start.astimezone(zone), "end": sm.end.astimezone(zone)})
                out[w] = sm
            return out

        def count(ms: list[PlantMachine]) -> dict[str, int]:
            c: dict[str, int] = {}
            for m in ms:
                key = m.state or "no_data"
                c[key] = c.get(key, 0) + 1
            return c

        machines: dict[str, PlantMachine] = {}
        for m in plant.machines:
            st, reason, since = current_state(states.get(m.id), latest["machine"].get(m.id, {}))
            machines[m.id] = PlantMachine(
                id=m.id, name=m.name, kind=m.kind.value, unit=m.unit, state=st, reason=reason,
                state_since=tu.fmt(since, zone), state_age_s=(max(0.0, now - since.timestamp()) if since else None),
                kpis=kpis("machine", m.id))
        area_out = []
        for a in areas:
            lines = []
            for li in (x for x in plant.lines if x.area == a):
                ms = [machines[m.id] for m in li.machines]
                lines.append(PlantLine(id=li.id, name=li.name, constraint=li.constraint,
                                       state=machines[li.constraint].state if li.constraint else None,
                                       state_counts=count(ms), kpis=kpis("line", li.id), machines=ms))
            area_out.append(PlantArea(id=a, state_counts=count([m for li in lines for m in li.machines]),
                                      kpis=kpis("area", a), lines=lines))
        site = PlantSite(id=plant.site.id, name=plant.site.name, timezone=site_zone,
                         state_counts=count(list(machines.values())), kpis=kpis("site", plant.site.id),
                         areas=area_out)
        return PlantOut(generated_at=tu.fmt(now, zone), site=site)

    @app.get("/api/v1/machines/{machine_id}/shift-report", response_model=ShiftReportOut, tags=["machines"],
             summary="Hour-by-hour target vs actual of a shift", responses=ERRORS)
    async def shift_report(
        request: Request, machine_id: str,
        shift_start: Annotated[str | None, Query(description="Any instant inside the wanted shift (its start is "
                                                              "simplest); default: the shift running now.")] = None,
        tz: TzParam = None,
    ) -> ShiftReportOut:
        """Targets come from the calendar (planned production time of each hour inside the shift) and the
        ideal speed: `ideal` = planned seconds × total / net run time of a closed hour that made something
        (the ideal count at the product mix the hour actually ran), else planned seconds / ideal seconds
        per unit of `product`, the product running at the hour's start. `target` is the configured units
        per hour scaled to the planned time when configured, else ideal × the machine's target OEE (the
        API configuration's, else the plant file's), else ideal. Actuals come from the stored `hour` rows."""
        m = ctx.machine(machine_id)
        zone = tzp(tz)
        at_dt = tu.instant(shift_start, "shift_start", zone)
        at = at_dt.timestamp() if at_dt else time.time()
        cal = plant.calendars[m.calendar]
        inst = [si for si in shift_instances(cal, at, at + 1) if si.start <= at < si.end]
        if not inst:
            raise HTTPException(404, f"no shift of calendar {m.calendar!r} at {tu.fmt(at, zone)}")
        si = inst[0]
        s_dt, e_dt = datetime.fromtimestamp(si.start, UTC), datetime.fromtimestamp(si.end, UTC)
        first_hour = local_floor(si.start, cal.timezone, "hour")
        async with ctx.connection(request) as conn:
            # From the hour before the shift: its product is the one running when the shift began.
            page = await queries.results_in_range(conn, "machine", [machine_id], "hour",
                                                  datetime.fromtimestamp(first_hour - 3600, UTC), e_dt, inside=False)
            configured = await ctx.targets(conn)
        rows = {p["start"]: p for _, p in page.rows}
        per_hour = configured.get(machine_id, {}).get("units_per_hour")
        target_oee = ctx.target_oee(m, configured)
        basis = "configured" if per_hour else ("target_oee" if target_oee is not None else "ideal")
        times, classes = calendar_boundaries(cal, si.start, si.end)
        bounds = [*times.tolist(), si.end]
        hours: list[ShiftHour] = []
        cum_t, cum_g = 0.0, 0.0
        h = first_hour
        now = time.time()
        prev = rows.get(tu.fmt(h - 3600, None))
        # The product at the hour's start is the one the previous hour ended with: a target that does
        # not flip while the hour runs. Hours without a previous row keep the last product known.
        product = (prev or {}).get("product")
        while h < si.end:
            h_end = local_next(h, cal.timezone, "hour")
            a, b = max(h, si.start), min(h_end, si.end)
            planned = sum(max(0.0, min(b, bounds[i + 1]) - max(a, bounds[i]))
                          for i in range(len(classes)) if classes[i] == CAL_PRODUCTION)
            row = rows.get(tu.fmt(h, None))
            if product not in m.products:
                product = (row or {}).get("product") if (row or {}).get("product") in m.products else m.first_product
            assert product is not None
            made, net = float((row or {}).get("total") or 0.0), float((row or {}).get("net_run_time_s") or 0.0)
            if h_end <= now and made > 0 and net > 0:
                # A closed hour weighs each product by what it made, as Performance does.
                ideal = planned * made / net
            else:
                ideal = planned / m.products[product].ideal_seconds_per_unit
            if per_hour:
                target = float(per_hour) * planned / 3600.0
            elif target_oee is not None:
                target = ideal * target_oee
            else:
                target = ideal
            cum_t += target
            started = h <= now
            good = float(row.get("good") or 0.0) if row else (0.0 if started else None)
            if good is not None:
                cum_g += good
            hours.append(ShiftHour(
                start=tu.fmt(a, zone), end=tu.fmt(b, zone), planned_s=planned, product=product, ideal=ideal,
                target=target, total=(float(row.get("total") or 0.0) if row else (0.0 if started else None)),
                good=good, reject=(float(row.get("reject") or 0.0) if row else (0.0 if started else None)),
                oee=row.get("oee") if row else None, cumulative_target=cum_t,
                cumulative_good=cum_g if started else None))
            if row and row.get("product") in m.products:
                product = row["product"]
            h = h_end
        return ShiftReportOut(
            machine=machine_id, unit=m.unit, shift=si.name, start=tu.fmt(s_dt, zone), end=tu.fmt(e_dt, zone),
            target_basis=basis,  # type: ignore[arg-type]
            hours=hours, target=cum_t, good=cum_g, total=sum(x.total or 0.0 for x in hours))

    @app.get("/api/v1/machines/{machine_id}/downtime", response_model=DowntimeOut, tags=["machines"],
             summary="Downtime events of a machine", responses=ERRORS)
    async def downtime(
        request: Request, machine_id: str, start: StartParam = None, end: EndParam = None, tz: TzParam = None,
        classes: Annotated[str | None, Query(description="Comma-separated time classes (default: "
                                                          + ",".join(DOWNTIME_CLASSES) + ").")] = None,
        limit: LimitParam = 100, offset: OffsetParam = 0,
    ) -> DowntimeOut:
        """State intervals overlapping [start, end), oldest first. Use an event's `start` (as given, or
        any ISO form of the same instant) to set its reason with PUT /api/v1/downtime/{machine}/{start}."""
        ctx.machine(machine_id)
        zone = tzp(tz)
        s, e = tu.check_range(tu.instant(start, "start", zone), tu.instant(end, "end", zone), settings.max_range_days)
        cls = [c for c in classes.split(",") if c] if classes else list(DOWNTIME_CLASSES)
        bad = [c for c in cls if c not in TIME_CLASSES]
        if bad:
            raise HTTPException(422, f"unknown time classes {bad}; allowed: {list(TIME_CLASSES)}")
        async with ctx.connection(request) as conn:
            rows, total = await queries.intervals_in_range(conn, machine_id, s, e, classes=cls, limit=limit,
                                                           offset=offset)
        now = time.time()
        items = [DowntimeEvent(
            machine=i.machine, start=tu.fmt(i.start, zone), end=tu.fmt(i.end, zone),
            duration_s=((i.end.timestamp() if i.end else now) - i.start.timestamp()),
            time_class=i.time_class, reason=i.reason, reason_category=i.reason_category,
            reason_source=i.reason_source, comment=i.comment) for i in rows]
        return DowntimeOut(machine=machine_id, items=items, total=total, limit=limit, offset=offset,
                           next_offset=_page_next(offset, len(items), total))

    csv_cols = ("machine", "line", "area", "shift", "start", "end", "unit", "total", "good", "reject",
                "availability", "performance", "quality", "oee", "teep", "coverage", "ppt_s", "run_time_s",
                "net_run_time_s", "stops", "mtbf_s", "mttr_s", *(f"{c}_s" for c in TIME_CLASSES),
                "flags", "config_hash")

    @app.get("/api/v1/reports/shifts.csv", tags=["reports"], summary="One CSV row per machine and shift",
             response_class=Response,
             responses={200: {"content": {"text/csv": {}}, "description": "CSV with a header row."},
                        **{k: v for k, v in ERRORS.items() if k != 404}})
    async def shifts_csv(request: Request, start: StartParam = None, end: EndParam = None,
                         tz: TzParam = None) -> Response:
        """Stored `shift` results of every machine whose shift starts in [start, end), ordered by shift start
        then machine. Ratios empty when undefined; times in `tz` (UTC by default)."""
        zone = tzp(tz)
        s, e = tu.check_range(tu.instant(start, "start", zone), tu.instant(end, "end", zone), settings.max_range_days)
        async with ctx.connection(request) as conn:
            page = await queries.results_in_range(conn, "machine", ctx.machine_ids, "shift", s, e, inside=False)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(csv_cols)
        for mid, p in page.rows:
            li = plant.line_of(mid)
            secs = p.get("seconds") or {}
            vals: dict[str, Any] = {**p, "machine": mid, "line": li.id, "area": li.area,
                                    "shift": p.get("shift") or "", "start": tu.fmt(p["start"], zone),
                                    "end": tu.fmt(p["end"], zone), "flags": ";".join(p.get("flags") or []),
                                    **{f"{c}_s": secs.get(c, 0.0) for c in TIME_CLASSES}}
            w.writerow(["" if vals.get(c) is None else vals[c] for c in csv_cols])
        fname = f"shifts_{s.strftime('%Y%m%d')}_{e.strftime('%Y%m%d')}.csv"
        return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{fname}"'})


__all__ = ["ENTITY_KINDS", "register"]
