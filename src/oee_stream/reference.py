"""A plain, per-event reference implementation of OEE-SEMANTICS.md for one machine and one window.

Deliberately written without NumPy and without the engine's code (its own calendar expansion, its own
counter logic, its own formulas), so tests and benchmarks can check the vectorized engine against it.
Slow by design: clarity over speed.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from oee_stream.bus import Sample
from oee_stream.config import ALL_DAYS, Calendar, Plant


def _calendar_intervals(cal: Calendar, start: float, end: float) -> list[tuple[float, float, str]]:
    """(start, end, 'production' | 'break') pieces of every shift overlapping [start, end)."""
    tz = ZoneInfo(cal.timezone)
    day = datetime.fromtimestamp(start, tz).date() - timedelta(days=1)
    last = datetime.fromtimestamp(end, tz).date()
    out: list[tuple[float, float, str]] = []
    while day <= last:
        shifts = [s for s in cal.shifts if ALL_DAYS[day.weekday()] in s.days]
        for exc in cal.exceptions:
            if exc.date == day:
                shifts = [] if exc.kind == "holiday" else list(exc.shifts)
        for sh in shifts:
            s0 = datetime.combine(day, sh.start, tz).timestamp()
            s1 = datetime.combine(day + timedelta(days=1 if sh.end <= sh.start else 0), sh.end, tz).timestamp()
            out.append((s0, s1, "production"))
            for br in sh.breaks:
                bday = day if br.start >= sh.start else day + timedelta(days=1)
                b0 = datetime.combine(bday, br.start, tz).timestamp()
                b1 = datetime.combine(bday + timedelta(days=1 if br.end <= br.start else 0), br.end, tz).timestamp()
                out.append((max(b0, s0), min(b1, s1), "break"))
        day += timedelta(days=1)
    return out


def _calendar_class_at(pieces: list[tuple[float, float, str]], t: float) -> str:
    shifts = [p for p in pieces if p[2] == "production" and p[0] <= t < p[1]]
    if not shifts:
        return "unscheduled"
    breaks = [p for p in pieces if p[2] == "break" and p[0] <= t < p[1]]
    return "planned_excluded" if len(breaks) >= len(shifts) else "production"


def reference_window(
    plant: Plant,
    machine_id: str,
    samples: list[Sample],
    *,
    now: float,
    start: float,
    end: float,
    origin: float,
) -> dict[str, Any]:
    """KPIs of [start, end) for one machine from raw samples, as plainly as possible."""
    mach = plant.machine(machine_id)
    pol = plant.policies
    table = plant.state_tables.get(mach.state_table or "", {})
    threshold = mach.microstop_threshold_s if mach.microstop_threshold_s is not None else pol.microstop_threshold_s
    seen: set[tuple[str, float, Any, str]] = set()
    mine: list[Sample] = []
    for s in samples:
        if s.machine != machine_id or s.ts >= now:
            continue
        ident = (s.signal, s.ts, s.value, s.quality)
        if ident in seen:
            continue
        seen.add(ident)
        mine.append(s)

    # 1. state changes -> segments
    changes: list[tuple[float, str, str]] = [(origin, "unknown", "no data")]
    state_samples = sorted((s for s in mine if s.signal == ("run" if mach.state_source == "run_bit" else "state")),
                           key=lambda s: s.ts)
    for s in state_samples:
        if s.quality != "good":
            changes.append((s.ts, "unknown", "bad quality"))
        elif s.signal == "run":
            changes.append((s.ts, "running" if s.value else "unplanned_stop", "" if s.value else "stopped"))
        else:
            code = int(s.value) if isinstance(s.value, int | float) else -1
            sc = table.get(code)
            if sc is None:
                changes.append((s.ts, "unknown", "unmapped state code"))
            else:
                changes.append((s.ts, sc.time_class, sc.reason or ""))
    segs: list[list[Any]] = []
    for i, (t0, cls, reason) in enumerate(changes):
        t1 = changes[i + 1][0] if i + 1 < len(changes) else now
        segs.append([t0, t1, cls, reason])

    # 2. micro stops: consecutive unplanned segments form one stop
    stops_started: list[float] = []
    i = 0
    while i < len(segs):
        if segs[i][2] != "unplanned_stop":
            i += 1
            continue
        j = i
        while j + 1 < len(segs) and segs[j + 1][2] == "unplanned_stop":
            j += 1
        length = segs[j][1] - segs[i][0]
        if length < threshold:
            for k in range(i, j + 1):
                segs[k][2] = "micro_stop"
        else:
            stops_started.append(segs[i][0])
        i = j + 1

    # 3. calendar overlay and clipping to the window
    pieces = _calendar_intervals(plant.calendars[mach.calendar], min(origin, start) - 86400, end + 86400)
    cuts = sorted({start, end, *(p[0] for p in pieces), *(p[1] for p in pieces)})
    seconds = dict.fromkeys(
        ("unscheduled", "planned_excluded", "running", "planned_stop", "unplanned_stop", "micro_stop",
         "unknown"), 0.0)
    by_reason: dict[str, float] = {}
    for t0, t1, cls, reason in segs:
        lo, hi = max(t0, start), min(t1, end)
        if hi <= lo:
            continue
        points = [lo] + [c for c in cuts if lo < c < hi] + [hi]
        for a, b in itertools.pairwise(points):
            cal = _calendar_class_at(pieces, a)
            c = cls if cal == "production" else cal
            seconds[c] += b - a
            if c in ("planned_stop", "unplanned_stop", "micro_stop"):
                key = reason or "unspecified"
                by_reason[key] = by_reason.get(key, 0.0) + (b - a)
    # time of the window before the engine's memory begins counts as unknown
    if start < origin:
        seconds["unknown"] += min(origin, end) - start
    stops = sum(1 for t in stops_started if start <= t < end and _calendar_class_at(pieces, t) == "production")

    # 4. counts with resets and rollovers, attributed to the product active at the count
    products = sorted((s for s in mine if s.signal == "product" and s.quality == "good"), key=lambda s: s.ts)

    def product_at(t: float) -> str:
        name = mach.first_product
        for p in products:
            if p.ts < t:
                name = str(p.value)
                for pname, prod in mach.products.items():
                    # a numeric code may come as an integer or a float (a Modbus register scaled, JSON 2.0)
                    if prod.code is not None and name in (str(prod.code), str(float(prod.code))):
                        name = pname
            else:
                break
        return name

    sums = {"total": 0.0, "reject": 0.0, "input": 0.0, "startup_reject": 0.0, "ideal_total": 0.0,
            "ideal_reject": 0.0, "ideal_startup_reject": 0.0}
    width = mach.counter_width if mach.kind.value == "discrete" else None
    for sig in ("total", "reject", "input", "startup_reject"):
        series = sorted((s for s in mine if s.signal == sig and s.quality == "good"), key=lambda s: s.ts)
        prev: float | None = None
        for s in series:
            v = float(s.value)  # type: ignore[arg-type]
            if prev is None:
                prev = v
                continue
            d = v - prev
            if d < 0:
                if width and prev >= 0.9 * 2**width:
                    d = (v - prev) % 2**width
                else:
                    d = v
            prev = v
            if start <= s.ts < end:
                sums[sig] += d
                spu = mach.products[product_at(s.ts)].ideal_seconds_per_unit
                if sig != "input":
                    sums["ideal_" + sig] += d * spu

    # 5. formulas, spelled out
    running, micro, unknown = seconds["running"], seconds["micro_stop"], seconds["unknown"]
    ppt = running + seconds["planned_stop"] + seconds["unplanned_stop"] + micro + unknown
    ppt_incl = ppt
    if pol.unknown_policy == "exclude":
        ppt -= unknown
    run_time = running + micro if pol.microstops_as == "performance" else running
    total, reject = sums["total"], sums["reject"]
    good = total - reject
    availability = run_time / ppt if ppt > 0 else None
    performance = sums["ideal_total"] / run_time if run_time > 0 else None
    quality = good / total if total > 0 else None
    if ppt <= 0:
        oee = None
    elif total <= 0:
        oee = 0.0
    else:
        oee = sums["ideal_total"] / ppt * (good / total)
    window = end - start
    # start-up rejects are a part of the rejects: when the window's start-up count reaches its reject count
    # (a misconfigured PLC), all its rejects are start-up rejects; their ideal seconds never exceed the rejects'
    startup_s = 0.0
    if sums["startup_reject"] > 0:
        if sums["startup_reject"] >= reject:
            startup_s = sums["ideal_reject"]
        else:
            startup_s = min(sums["ideal_startup_reject"], sums["ideal_reject"])
    six_big_losses = {
        "unplanned_stops": seconds["unplanned_stop"],
        "planned_stops": seconds["planned_stop"],
        "small_stops": micro,
        "slow_cycles": running - sums["ideal_total"],
        "production_rejects": sums["ideal_reject"] - startup_s,
        "startup_rejects": startup_s,
    }
    return {
        "seconds": seconds,
        "total": total,
        "reject": reject,
        "good": good,
        "input": sums["input"],
        "net_run_time_s": sums["ideal_total"],
        "ppt_s": ppt,
        "run_time_s": run_time,
        "availability": availability,
        "performance": performance,
        "quality": quality,
        "oee": oee,
        "teep": (oee * ppt / window) if (oee is not None and window > 0) else 0.0,
        "coverage": (1 - unknown / ppt_incl) if ppt_incl > 0 else None,
        "stops": stops,
        "mtbf_s": run_time / stops if stops else None,
        "mttr_s": seconds["unplanned_stop"] / stops if stops else None,
        "downtime_by_reason_s": by_reason,
        "six_big_losses_s": six_big_losses,
    }
