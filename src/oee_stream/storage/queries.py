"""Read side: the queries the API needs, and `rollup`, the pure roll-up of stored KPI records.

A roll-up adds time-class seconds, counts and the other additive quantities of its members and then
applies the formulas of OEE-SEMANTICS.md section 2 once (section 4): ratios are never averaged.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from oee_stream.engine.result import SIX_BIG_LOSSES, TIME_CLASSES, iso

# Stored hourly results carry ppt_s and run_time_s as computed under the plant's policies
# (unknown_policy, microstops_as) of that hour, so adding them needs no policy knowledge here and stays
# right across a policy change inside the range.
_ADDITIVE_FIELDS = ("total", "good", "reject", "ppt_s", "run_time_s", "net_run_time_s", "fully_productive_s")
_IN_PPT = ("running", "planned_stop", "unplanned_stop", "micro_stop", "unknown")


def _num(x: Any) -> float:
    if x is None or isinstance(x, bool):
        return 0.0
    try:
        f = float(x)
    except (TypeError, ValueError):
        return 0.0
    return f if math.isfinite(f) else 0.0


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _epoch(x: Any) -> float | None:
    if isinstance(x, int | float) and not isinstance(x, bool):
        return float(x)
    if isinstance(x, datetime):
        return x.timestamp()
    if isinstance(x, str):
        try:
            return datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def rollup(
    records: Iterable[Mapping[str, Any]],
    *,
    entity: str | None = None,
    entity_kind: str | None = None,
    start: float | None = None,
    end: float | None = None,
    window: str = "range",
) -> dict[str, Any]:
    """Combine KPI records (KpiResult.to_json() dicts) into one record by adding, then dividing.

    `start`/`end` (epoch seconds) default to the span of the records; when the records cover less
    than that span the result carries the flag `partial_range` and `coverage` of the missing time is
    not invented: only the stored seconds are added. Pure: no I/O, no clock.
    """
    recs = list(records)
    seconds = dict.fromkeys(TIME_CLASSES, 0.0)
    sums = dict.fromkeys(_ADDITIVE_FIELDS, 0.0)
    losses = dict.fromkeys(SIX_BIG_LOSSES, 0.0)
    by_reason: dict[str, float] = {}
    stops = 0
    input_total = 0.0
    has_input = False
    covered = 0.0
    member_flags: set[str] = set()
    units: set[str] = set()
    config_hashes: set[str] = set()
    starts: list[float] = []
    ends: list[float] = []
    for r in recs:
        for c in TIME_CLASSES:
            seconds[c] += _num((r.get("seconds") or {}).get(c))
        for f in _ADDITIVE_FIELDS:
            sums[f] += _num(r.get(f))
        for k, v in (r.get("six_big_losses_s") or {}).items():
            losses[k] = losses.get(k, 0.0) + _num(v)
        for k, v in (r.get("downtime_by_reason_s") or {}).items():
            by_reason[k] = by_reason.get(k, 0.0) + _num(v)
        stops += int(_num(r.get("stops")))
        if r.get("input_total") is not None:
            has_input = True
            input_total += _num(r.get("input_total"))
        member_flags.update(str(f) for f in (r.get("flags") or ()))
        if r.get("unit"):
            units.add(str(r["unit"]))
        if r.get("config_hash"):
            config_hashes.add(str(r["config_hash"]))
        s, e = _epoch(r.get("start")), _epoch(r.get("end"))
        if s is not None and e is not None:
            starts.append(s)
            ends.append(e)
            covered += max(0.0, e - s)
        if entity is None and r.get("entity"):
            entity = str(r["entity"])
        if entity_kind is None and r.get("entity_kind"):
            entity_kind = str(r["entity_kind"])

    start = start if start is not None else (min(starts) if starts else 0.0)
    end = end if end is not None else (max(ends) if ends else start)
    all_time = sum(seconds.values())
    ppt = sums["ppt_s"]
    run_time = sums["run_time_s"]
    net = sums["net_run_time_s"]
    total, good = sums["total"], sums["good"]
    ppt_incl = sum(seconds[c] for c in _IN_PPT)

    availability = _ratio(run_time, ppt)
    performance = _ratio(net, run_time)
    quality = _ratio(good, total)
    # OEE = A x P x Q = net/PPT x good/total: defined even when run time is 0 at a window boundary,
    # and 0 (not null) when there was planned time but nothing good was made.
    oee: float | None
    if ppt <= 0:
        oee = None
    elif total <= 0:
        oee = 0.0
    else:
        oee = net / ppt * good / total
    utilization = _ratio(ppt, all_time)
    teep: float | None
    if all_time <= 0:
        teep = None
    elif ppt <= 0:
        teep = 0.0
    else:
        teep = (oee or 0.0) * ppt / all_time
    coverage = 1.0 - seconds["unknown"] / ppt_incl if ppt_incl > 0 else None

    # Member flags that describe a single window's numbers would be wrong for the sum; keep the ones
    # about data problems and recompute the rest.
    flags = sorted(f for f in member_flags if f not in {"performance_over_100"})
    if performance is not None and performance > 1.0:
        flags.append("performance_over_100")
    if not recs:
        flags.append("no_data")
    elif end - start - covered > 1e-6:
        flags.append("partial_range")
    if len(config_hashes) > 1:
        flags.append("mixed_config")

    return {
        "entity": entity or "",
        "entity_kind": entity_kind or "machine",
        "window": window,
        "start": iso(start),
        "end": iso(end),
        "seconds": seconds,
        "total": total,
        "good": good,
        "reject": sums["reject"],
        "unit": units.pop() if len(units) == 1 else ("" if not units else "mixed"),
        "availability": availability,
        "performance": performance,
        "quality": quality,
        "oee": oee,
        "teep": teep,
        "utilization": utilization,
        "coverage": coverage,
        "ppt_s": ppt,
        "run_time_s": run_time,
        "net_run_time_s": net,
        "fully_productive_s": sums["fully_productive_s"],
        "stops": stops,
        "mtbf_s": _ratio(run_time, stops),
        "mttr_s": _ratio(seconds["unplanned_stop"], stops),
        "six_big_losses_s": losses,
        "downtime_by_reason_s": by_reason,
        "flags": flags,
        "config_hash": config_hashes.pop() if len(config_hashes) == 1 else "",
        "weight_yield": _ratio(good, input_total) if has_input else None,
        "input_total": input_total if has_input else None,
        "records": len(recs),
    }


# ------------------------------------------------------------------------------------------ queries


@dataclass(frozen=True, slots=True)
class StoredResult:
    entity: str
    window_kind: str
    computed_at: datetime
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CurrentState:
    state: str
    reason: str | None
    since: datetime


_LATEST = """
SELECT e.entity, k.kind, r.computed_at, r.payload
FROM unnest(%(entities)s::text[]) AS e(entity)
CROSS JOIN unnest(%(kinds)s::text[]) AS k(kind)
CROSS JOIN LATERAL (
    SELECT computed_at, payload
    FROM oee_results
    WHERE entity = e.entity AND window_kind = k.kind
      AND (%(entity_kind)s::text IS NULL OR entity_kind = %(entity_kind)s::text)
    ORDER BY window_end DESC, window_start DESC
    LIMIT 1
) AS r
"""


async def latest_results(
    conn: psycopg.AsyncConnection[Any],
    entities: Sequence[str],
    window_kinds: Sequence[str],
    *,
    entity_kind: str | None = None,
) -> dict[str, dict[str, StoredResult]]:
    """Newest stored result per entity and window kind (by window end), as {entity: {kind: result}}.

    Give `entity_kind` (machine | line | area | site): a line and an area may share an id."""
    out: dict[str, dict[str, StoredResult]] = {e: {} for e in entities}
    if not entities or not window_kinds:
        return out
    cur = await conn.execute(
        _LATEST, {"entities": list(entities), "kinds": list(window_kinds), "entity_kind": entity_kind}
    )
    for entity, kind, computed_at, payload in await cur.fetchall():
        out[entity][kind] = StoredResult(entity, kind, computed_at, payload)
    return out


async def open_states(conn: psycopg.AsyncConnection[Any], machines: Sequence[str]) -> dict[str, CurrentState]:
    """The open state interval (end_time NULL) of each machine that has one: its newest interval, if open."""
    return {m: CurrentState(tc, reason, since)
            for m, since, end, tc, reason in await latest_intervals(conn, machines) if end is None}


async def hourly_payloads(
    conn: psycopg.AsyncConnection[Any],
    entity: str,
    start: datetime,
    end: datetime,
    *,
    entity_kind: str = "machine",
) -> list[dict[str, Any]]:
    """Stored hourly results lying entirely inside [start, end)."""
    page = await results_in_range(conn, entity_kind, [entity], "hour", start, end, inside=True)
    return [p for _, p in page.rows]


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[tuple[str, dict[str, Any]]]  # (entity, payload)
    total: int  # rows matching without limit/offset


async def results_in_range(
    conn: psycopg.AsyncConnection[Any],
    entity_kind: str,
    entities: Sequence[str],
    window_kind: str,
    start: datetime,
    end: datetime,
    *,
    inside: bool,
    limit: int | None = None,
    offset: int = 0,
) -> Page:
    """Stored results of one window kind, ordered by window start then entity.

    `inside=True`: windows lying entirely inside [start, end) (for roll-ups, so no time outside the
    range is added); False: windows starting in [start, end) (series and reports, the last bucket may
    still be in progress).
    """
    cond = "window_end <= %(end)s" if inside else "window_start < %(end)s"
    q = f"""
        SELECT entity, payload, count(*) OVER () AS n FROM oee_results
        WHERE entity = ANY(%(entities)s) AND entity_kind = %(kind)s AND window_kind = %(wk)s
          AND window_start >= %(start)s AND {cond}
        ORDER BY window_start, entity
        LIMIT %(limit)s OFFSET %(offset)s"""
    params = {"entities": list(entities), "kind": entity_kind, "wk": window_kind,
              "start": start.astimezone(UTC), "end": end.astimezone(UTC), "limit": limit, "offset": offset}
    cur = await conn.execute(q, params)
    fetched = await cur.fetchall()
    total = int(fetched[0][2]) if fetched else 0
    if not fetched and offset:
        cur = await conn.execute(
            f"""SELECT count(*) FROM oee_results
                WHERE entity = ANY(%(entities)s) AND entity_kind = %(kind)s AND window_kind = %(wk)s
                  AND window_start >= %(start)s AND {cond}""", params)
        row = await cur.fetchone()
        total = int(row[0]) if row else 0
    return Page([(e, p) for e, p, _ in fetched], total)


@dataclass(frozen=True, slots=True)
class Interval:
    machine: str
    start: datetime
    end: datetime | None
    time_class: str
    reason: str | None
    reason_source: str | None
    comment: str | None
    reason_category: str | None = None


_INTERVAL_COLS = "machine_id, start_time, end_time, time_class, reason, reason_source, comment, reason_category"


async def intervals_in_range(
    conn: psycopg.AsyncConnection[Any],
    machine: str,
    start: datetime,
    end: datetime,
    *,
    classes: Sequence[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> tuple[list[Interval], int]:
    """State intervals of a machine overlapping [start, end) (open ones included), oldest first, and the
    number matching without limit/offset."""
    q = f"""
        SELECT {_INTERVAL_COLS}, count(*) OVER () FROM state_intervals
        WHERE machine_id = %(m)s AND start_time < %(end)s AND (end_time IS NULL OR end_time > %(start)s)
          AND (%(classes)s::text[] IS NULL OR time_class = ANY(%(classes)s::text[]))
        ORDER BY start_time
        LIMIT %(limit)s OFFSET %(offset)s"""
    cur = await conn.execute(q, {"m": machine, "start": start.astimezone(UTC), "end": end.astimezone(UTC),
                                 "classes": list(classes) if classes is not None else None,
                                 "limit": limit, "offset": offset})
    rows = await cur.fetchall()
    total = int(rows[0][-1]) if rows else 0
    return [Interval(*r[:-1]) for r in rows], total


# ------------------------------------------------------------------------------ live cache refresh

_LATEST_KEYS = """
SELECT e.entity, e.kind, k.wk, r.window_start, r.window_end, r.computed_at
FROM unnest(%(entities)s::text[], %(ekinds)s::text[]) AS e(entity, kind)
CROSS JOIN unnest(%(wks)s::text[]) AS k(wk)
CROSS JOIN LATERAL (
    SELECT window_start, window_end, computed_at
    FROM oee_results
    WHERE entity = e.entity AND entity_kind = e.kind AND window_kind = k.wk
    ORDER BY window_end DESC, window_start DESC
    LIMIT 1
) AS r
"""

_RESULTS_BY_KEY = """
SELECT o.entity, o.entity_kind, o.window_kind, o.window_start, o.window_end, o.computed_at, o.payload
FROM unnest(%(entities)s::text[], %(ekinds)s::text[], %(wks)s::text[], %(starts)s::timestamptz[])
     AS k(entity, kind, wk, ws)
JOIN oee_results o
  ON o.entity = k.entity AND o.entity_kind = k.kind AND o.window_kind = k.wk AND o.window_start = k.ws
"""

ResultKey = tuple[str, str, str]  # (entity_kind, entity, window_kind)
_CHUNK = 200


async def _fetch_in_chunks(cur: psycopg.AsyncCursor[Any]) -> list[tuple[Any, ...]]:
    """All rows, parsed a chunk at a time with the event loop served in between: psycopg converts rows
    when they are fetched, and a thousand timestamps and payloads in one go would hold up every request
    of the API for milliseconds."""
    out: list[tuple[Any, ...]] = []
    while rows := await cur.fetchmany(_CHUNK):
        out.extend(rows)
        await asyncio.sleep(0)
    return out
# (window_start, window_end, computed_at) of the newest stored row of a key
ResultStamp = tuple[datetime, datetime, datetime]


async def latest_result_stamps(
    conn: psycopg.AsyncConnection[Any], entities: Sequence[tuple[str, str]], window_kinds: Sequence[str]
) -> dict[ResultKey, ResultStamp]:
    """For every (entity_kind, entity) and window kind, the key columns of its newest stored result (the
    row `latest_results` returns), without the payload: cheap enough to poll every second."""
    if not entities or not window_kinds:
        return {}
    cur = await conn.execute(_LATEST_KEYS, {"entities": [e for _, e in entities],
                                            "ekinds": [k for k, _ in entities], "wks": list(window_kinds)})
    out: dict[ResultKey, ResultStamp] = {}
    while rows := await cur.fetchmany(_CHUNK):
        for e, k, w, s, en, c in rows:
            out[(k, e, w)] = (s, en, c)
        await asyncio.sleep(0)
    return out


async def results_by_key(
    conn: psycopg.AsyncConnection[Any], keys: Sequence[tuple[str, str, str, datetime]]
) -> list[tuple[Any, ...]]:
    """Stored rows by primary key ((entity_kind, entity, window_kind, window_start) tuples), as
    (entity, entity_kind, window_kind, window_start, window_end, computed_at, payload)."""
    if not keys:
        return []
    cur = await conn.execute(_RESULTS_BY_KEY, {
        "ekinds": [k[0] for k in keys], "entities": [k[1] for k in keys], "wks": [k[2] for k in keys],
        "starts": [k[3] for k in keys]})
    return await _fetch_in_chunks(cur)


_LATEST_INTERVALS = """
SELECT e.machine_id, s.start_time, s.end_time, s.time_class, s.reason
FROM unnest(%s::text[]) AS e(machine_id)
CROSS JOIN LATERAL (
    SELECT start_time, end_time, time_class, reason
    FROM state_intervals
    WHERE machine_id = e.machine_id
    ORDER BY start_time DESC
    LIMIT 1
) AS s
"""


async def latest_intervals(conn: psycopg.AsyncConnection[Any], machines: Sequence[str]) -> list[tuple[Any, ...]]:
    """The newest state interval of each machine (open or not), as
    (machine_id, start_time, end_time, time_class, reason)."""
    if not machines:
        return []
    cur = await conn.execute(_LATEST_INTERVALS, (list(machines),))
    return await _fetch_in_chunks(cur)


# ------------------------------------------------------------------------------------- loss Pareto

STOP_CLASSES: tuple[str, ...] = ("planned_stop", "unplanned_stop", "micro_stop")

_DOWNTIME_BY_REASON = """
SELECT reason, sum(seconds) AS seconds
FROM (
    SELECT COALESCE(reason, 'unspecified') AS reason,
           greatest(0, extract(epoch FROM least(COALESCE(end_time, now()), %(end)s)
                                        - greatest(start_time, %(start)s))) AS seconds
    FROM state_intervals
    WHERE machine_id = ANY(%(machines)s) AND time_class = ANY(%(classes)s)
      AND start_time < %(end)s AND (end_time IS NULL OR end_time > %(start)s)
) AS clipped
GROUP BY reason
HAVING sum(seconds) > 0
"""


async def downtime_by_reason(
    conn: psycopg.AsyncConnection[Any], machines: Sequence[str], start: datetime, end: datetime,
    *, classes: Sequence[str] = STOP_CLASSES,
) -> dict[str, float]:
    """Stop seconds per *final* reason of the machines' state intervals, clipped to [start, end) (an open
    interval counts until now). The reason column is final: an operator's reason replaces the PLC's or the
    rule's and is never overwritten by the engine (writer upsert), and split events count per part.
    Intervals without a reason count as `unspecified`, as the engine names them."""
    if not machines:
        return {}
    cur = await conn.execute(_DOWNTIME_BY_REASON, {
        "machines": list(machines), "classes": list(classes), "start": start.astimezone(UTC),
        "end": end.astimezone(UTC)})
    return {str(r): float(s) for r, s in await cur.fetchall()}
