"""Shift calendars turned into UTC intervals, in the plant's IANA timezone, DST included.

A calendar is expanded per local day (a few shifts a day), never per sample or per machine, so this
module may loop; the engine consumes the resulting boundary arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from oee_stream.config import ALL_DAYS, Calendar, Shift

# Calendar classes; PRODUCTION means "the machine's own state decides".
CAL_UNSCHEDULED, CAL_EXCLUDED, CAL_PRODUCTION = 0, 1, 2


@dataclass(frozen=True, slots=True)
class ShiftInstance:
    name: str
    start: float
    end: float
    breaks: tuple[tuple[float, float], ...]


def _local(d: date, t: time, tz: ZoneInfo) -> float:
    # fold=0 picks the first of an ambiguous hour; a nonexistent local time (spring forward) is shifted
    # forward by zoneinfo, which is what a wall clock does.
    return datetime.combine(d, t).replace(tzinfo=tz).timestamp()


def _shifts_on(cal: Calendar, d: date) -> list[Shift]:
    for exc in cal.exceptions:
        if exc.date == d:
            return [] if exc.kind == "holiday" else list(exc.shifts)
    wd = ALL_DAYS[d.weekday()]
    return [s for s in cal.shifts if wd in s.days]


def shift_instances(cal: Calendar, start: float, end: float) -> list[ShiftInstance]:
    """Every shift overlapping [start, end), in start order."""
    tz = ZoneInfo(cal.timezone)
    d0 = datetime.fromtimestamp(start, tz).date() - timedelta(days=1)
    d1 = datetime.fromtimestamp(end, tz).date()
    out: list[ShiftInstance] = []
    d = d0
    while d <= d1:
        for s in _shifts_on(cal, d):
            s_start = _local(d, s.start, tz)
            end_day = d + timedelta(days=1) if s.end <= s.start else d
            s_end = _local(end_day, s.end, tz)
            if s_end <= start or s_start >= end:
                continue
            brks: list[tuple[float, float]] = []
            for b in s.breaks:
                b_day = d if b.start >= s.start else d + timedelta(days=1)
                b_start = _local(b_day, b.start, tz)
                b_end_day = b_day + timedelta(days=1) if b.end <= b.start else b_day
                b_end = _local(b_end_day, b.end, tz)
                b_start, b_end = max(b_start, s_start), min(b_end, s_end)
                if b_end > b_start:
                    brks.append((b_start, b_end))
            out.append(ShiftInstance(s.name, s_start, s_end, tuple(sorted(brks))))
        d += timedelta(days=1)
    out.sort(key=lambda x: x.start)
    return out


def calendar_boundaries(
    cal: Calendar, start: float, end: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]:
    """(times, classes): the calendar class from times[i] until times[i+1]; times[0] == start.

    Overlapping shifts are merged: a second in any shift is production unless it is in a break of every
    shift covering it; this keeps "every second in exactly one class".
    """
    events: list[tuple[float, int]] = []  # (+1/-1 shift depth) and (+1/-1 break depth) encoded apart
    for si in shift_instances(cal, start, end):
        events.append((si.start, 1))
        events.append((si.end, -1))
        for b0, b1 in si.breaks:
            events.append((b0, 2))
            events.append((b1, -2))
    cuts = sorted({start, end, *(t for t, _ in events if start < t < end)})
    times = np.array(cuts[:-1], dtype=np.float64)
    classes = np.empty(len(times), dtype=np.int8)
    for i, t in enumerate(times):
        in_shift = sum(1 if k == 1 else -1 for (tt, k) in events if abs(k) == 1 and tt <= t)
        in_break = sum(1 if k == 2 else -1 for (tt, k) in events if abs(k) == 2 and tt <= t)
        if in_shift <= 0:
            classes[i] = CAL_UNSCHEDULED
        elif in_break >= in_shift:
            classes[i] = CAL_EXCLUDED
        else:
            classes[i] = CAL_PRODUCTION
    # Merge equal neighbours so the boundary list stays short.
    keep = np.ones(len(times), dtype=np.bool_)
    keep[1:] = classes[1:] != classes[:-1]
    return times[keep], classes[keep]


def _offset_change(lo: float, hi: float, tz: ZoneInfo) -> float | None:
    """The moment in (lo, hi] where the UTC offset changes (to the second), if it does; spans here are at
    most an hour or two, so there is at most one change."""
    off_hi = datetime.fromtimestamp(hi, tz).utcoffset()
    if datetime.fromtimestamp(lo, tz).utcoffset() == off_hi:
        return None
    a, b = lo, hi
    while b - a > 1.0:
        mid = float(int((a + b) / 2))
        if mid <= a:
            break
        if datetime.fromtimestamp(mid, tz).utcoffset() == off_hi:
            b = mid
        else:
            a = mid
    return b


def local_floor(ts: float, tz_name: str, unit: str) -> float:
    """Start of the local hour / day / week (Monday) containing ts."""
    tz = ZoneInfo(tz_name)
    dt = datetime.fromtimestamp(ts, tz)
    if unit == "hour":
        # Local hours can be 30 or 45 minutes off UTC; flooring in local time keeps wallboards aligned.
        f = datetime.combine(dt.date(), time(dt.hour)).replace(tzinfo=tz, fold=dt.fold).timestamp()
        # A clock change by half an hour (Lord Howe) starts a local hour of its own; after it, hours are
        # on the new :00 again.
        cut = _offset_change(f, ts, tz) if f < ts else None
        return cut if cut is not None and cut <= ts else f
    if unit == "day":
        return _local(dt.date(), time(0), tz)
    if unit == "week":
        return _local(dt.date() - timedelta(days=dt.weekday()), time(0), tz)
    raise ValueError(f"unknown unit {unit!r}")


def local_next(ts_floor: float, tz_name: str, unit: str) -> float:
    tz = ZoneInfo(tz_name)
    dt = datetime.fromtimestamp(ts_floor, tz)
    if unit == "hour":
        # The next local :00, or the clock change before it: whole-hour DST changes fall on :00 anyway, a
        # half-hour one (Lord Howe) gives a 30-minute hour and keeps the later hours on local :00.
        wall = datetime.combine(dt.date(), time(dt.hour)) + timedelta(hours=1)
        nxt = wall.replace(tzinfo=tz).timestamp()
        if nxt <= ts_floor:
            nxt = wall.replace(tzinfo=tz, fold=1).timestamp()
        if nxt <= ts_floor:
            nxt = ts_floor + 3600.0
        cut = _offset_change(ts_floor, nxt, tz)
        return cut if cut is not None and cut < nxt else nxt
    if unit == "day":
        return _local(dt.date() + timedelta(days=1), time(0), tz)
    if unit == "week":
        return _local(dt.date() + timedelta(days=7), time(0), tz)
    raise ValueError(f"unknown unit {unit!r}")
