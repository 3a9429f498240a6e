"""Time parameters of the API: instants in UTC or a plant-local zone, and rendering in a chosen zone.

`tz` is `UTC`, `plant` (the site's IANA zone), any IANA name, or a fixed offset like `+02:00`. It says
how to read bounds given without an offset (`2025-03-01T06:00`, or a bare date meaning local midnight)
and in which zone response times are written. Bounds with an offset are exact instants whatever `tz` is.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import HTTPException

_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
TIME_KEYS = ("start", "end", "state_since")
# Instants the API accepts. The routes step a day or a week past a bound and write times in any zone
# (offsets up to ±23:59); Python's datetime ends at years 1 and 9999, so leave a margin at both ends.
MIN_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 1, 1, tzinfo=UTC)


def zone(tz: str | None, plant_zone: str) -> tzinfo | None:
    """The zone named by a `tz` parameter; None when not given (then naive bounds are refused)."""
    if tz is None or tz == "":
        return None
    if tz.lower() == "plant":
        return ZoneInfo(plant_zone)
    if tz.upper() in ("UTC", "Z"):
        return UTC
    m = _OFFSET.match(tz)
    if m:
        hours, minutes = int(m.group(2)), int(m.group(3))
        if hours > 23 or minutes > 59:
            raise HTTPException(422, f"tz: offset {tz!r} out of range; offsets are -23:59 to +23:59")
        sign = 1 if m.group(1) == "+" else -1
        return timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise HTTPException(
            422, f"unknown tz {tz!r}: use UTC, plant, an IANA zone (Europe/Berlin) or an offset (+02:00)"
        ) from None


def instant(value: str | None, name: str, tz: tzinfo | None) -> datetime | None:
    """Parse an ISO 8601 instant (or a date = local midnight); naive values need `tz`."""
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            dt = datetime(d.year, d.month, d.day)
        else:
            # An unencoded "+01:00" in a query string arrives as " 01:00".
            text = value.replace(" ", "+", 1) if "T" in value and value.count(" ") == 1 else value
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(
            422, f"{name}: {value!r} is not an ISO 8601 time (e.g. 2025-03-01T06:00:00Z or 2025-03-01)"
        ) from None
    if dt.tzinfo is None:
        if tz is None:
            raise HTTPException(
                422, f"{name} needs a UTC offset, e.g. 2025-03-01T06:00:00Z, or give ?tz=plant|UTC|+02:00"
            )
        dt = dt.replace(tzinfo=tz)
    try:
        inside = MIN_INSTANT <= dt.astimezone(UTC) <= MAX_INSTANT
    except (OverflowError, ValueError):  # a local time near year 1 or 9999 has no UTC equivalent
        inside = False
    if not inside:
        raise HTTPException(
            422, f"{name}: {value!r} is out of range; times must lie between 1970-01-01T00:00:00Z and "
                 "9999-01-01T00:00:00Z"
        )
    return dt


def check_range(start: datetime | None, end: datetime | None, max_days: int) -> tuple[datetime, datetime]:
    if start is None or end is None:
        raise HTTPException(422, "a range needs both start and end (ISO 8601 with offset, or ?tz=)")
    if end <= start:
        raise HTTPException(422, "end must be after start")
    if end - start > timedelta(days=max_days):
        raise HTTPException(422, f"range too long: at most {max_days} days")
    return start, end


def fmt(x: Any, tz: tzinfo | None) -> Any:
    """An instant (datetime, ISO string or epoch) written in `tz` (UTC with `Z` by default)."""
    if x is None:
        return None
    if isinstance(x, str):
        try:
            dt = datetime.fromisoformat(x.replace("Z", "+00:00"))
        except ValueError:
            return x
    elif isinstance(x, int | float):
        dt = datetime.fromtimestamp(x, tz=UTC)
    else:
        dt = x
    if tz is None or tz is UTC:
        return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return dt.astimezone(tz).isoformat()


def localize(record: dict[str, Any], tz: tzinfo | None) -> dict[str, Any]:
    """A KPI record with its times written in `tz` (a copy; no-op for UTC)."""
    if tz is None or tz is UTC:
        return record
    out = dict(record)
    for k in TIME_KEYS:
        if out.get(k) is not None:
            out[k] = fmt(out[k], tz)
    return out
