"""Changes made through the API: operator reasons and splits of downtime events, API configuration.

Each change runs in one transaction together with its `audit_log` row (who, when, old, new), so there
is never a change without its audit entry or the other way round.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

# Time that is not downtime: an operator reason may never turn it into a stop.
NOT_DOWNTIME = ("running", "unscheduled", "planned_excluded")


class EditError(Exception):
    """A refused edit; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_COLS = ("machine_id", "start_time", "end_time", "time_class", "reason", "reason_category", "reason_source",
         "comment", "end_locked")


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(_COLS, r, strict=True))
    for k in ("start_time", "end_time"):
        if d[k] is not None:
            d[k] = d[k].isoformat()
    return d


async def audit(conn: psycopg.AsyncConnection[Any], actor: str, action: str, target: dict[str, Any],
                 old: Any, new: Any) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, old, new) VALUES (%s, %s, %s, %s, %s)",
        (actor, action, Jsonb(target), Jsonb(old) if old is not None else None,
         Jsonb(new) if new is not None else None),
    )


async def _locked(conn: psycopg.AsyncConnection[Any], machine: str, start: datetime) -> dict[str, Any]:
    # The row is locked by an UPDATE that changes nothing rather than SELECT ... FOR UPDATE: TimescaleDB
    # documents UPDATE on compressed chunks (2.11+), not row locks, and an event edited weeks later sits
    # in a compressed chunk. RETURNING gives the row as it is, i.e. the old values for the audit log.
    cur = await conn.execute(
        f"UPDATE state_intervals SET comment = comment WHERE machine_id = %s AND start_time = %s "
        f"RETURNING {', '.join(_COLS)}",
        (machine, start))
    r = await cur.fetchone()
    if r is None:
        raise EditError(404, f"no event of machine {machine!r} starts at {start.isoformat()}; "
                             "use the exact `start` from GET /api/v1/machines/{machine}/downtime")
    row = _row(r)
    if row["time_class"] in NOT_DOWNTIME:
        raise EditError(409, f"this event is {row['time_class']!r} time, not downtime: an operator reason can "
                             "never turn running (or unscheduled/break) time into downtime")
    return row


async def set_reason(conn: psycopg.AsyncConnection[Any], actor: str, machine: str, start: datetime, *,
                     reason: str | None, category: str | None, comment: str | None) -> dict[str, Any]:
    """Set or change the reason (and/or comment) of a downtime event; returns the new row."""
    async with conn.transaction():
        old = await _locked(conn, machine, start)
        cur = await conn.execute(
            f"""UPDATE state_intervals SET
                    reason = COALESCE(%s, reason),
                    reason_category = CASE WHEN %s::text IS NULL THEN reason_category ELSE %s END,
                    reason_source = CASE WHEN %s::text IS NULL THEN reason_source ELSE 'operator' END,
                    comment = COALESCE(%s, comment)
                WHERE machine_id = %s AND start_time = %s RETURNING {', '.join(_COLS)}""",
            (reason, reason, category, reason, comment, machine, start))
        r = await cur.fetchone()
        assert r is not None
        new = _row(r)
        await audit(conn, actor, "set_reason", {"machine": machine, "start": old["start_time"]}, old, new)
    return new


async def split(conn: psycopg.AsyncConnection[Any], actor: str, machine: str, start: datetime, at: datetime, *,
                first: dict[str, Any], second: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a closed downtime event at `at` into [start, at) and [at, end); each part gets its own
    reason/category/comment (None keeps the original's). Both parts keep the time class."""
    async with conn.transaction():
        old = await _locked(conn, machine, start)
        if old["end_time"] is None:
            raise EditError(409, "the event is still going on; split it after it has ended")
        end = datetime.fromisoformat(old["end_time"])
        if not (start < at < end):
            raise EditError(422, f"`at` must lie strictly inside the event ({old['start_time']} .. {old['end_time']})")

        def part(d: dict[str, Any]) -> tuple[Any, ...]:
            touched = d.get("reason") is not None
            return (d.get("reason") or old["reason"],
                    d.get("category") if touched else old["reason_category"],
                    "operator" if touched else old["reason_source"],
                    d.get("comment") if d.get("comment") is not None else old["comment"])

        r1, r2 = part(first), part(second)
        cur = await conn.execute(
            f"""UPDATE state_intervals SET end_time = %s, end_locked = true, reason = %s, reason_category = %s,
                    reason_source = %s, comment = %s
                WHERE machine_id = %s AND start_time = %s RETURNING {', '.join(_COLS)}""",
            (at, *r1, machine, start))
        a = await cur.fetchone()
        try:
            async with conn.transaction():
                cur = await conn.execute(
                    f"""INSERT INTO state_intervals ({', '.join(_COLS)}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, true)
                        RETURNING {', '.join(_COLS)}""",
                    (machine, at, end, old["time_class"], r2[0], r2[1], r2[2], r2[3]))
        except psycopg.errors.UniqueViolation:
            raise EditError(409, f"an event already starts at {at.isoformat()}") from None
        b = await cur.fetchone()
        assert a is not None and b is not None
        new = [_row(a), _row(b)]
        await audit(conn, actor, "split", {"machine": machine, "start": old["start_time"], "at": at.isoformat()},
                     old, new)
    return new[0], new[1]


def body_hash(body: Any) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


async def latest_config(conn: psycopg.AsyncConnection[Any], section: str) -> tuple[int, Any, str] | None:
    """(version, body, hash) of the newest version of a configuration section, or None."""
    cur = await conn.execute(
        "SELECT version, body, config_hash FROM api_config WHERE section = %s ORDER BY version DESC LIMIT 1",
        (section,))
    r = await cur.fetchone()
    return (int(r[0]), r[1], str(r[2])) if r else None


async def put_config(conn: psycopg.AsyncConnection[Any], actor: str, section: str, body: Any) -> tuple[int, str]:
    """Store a new version of a section (a no-op returning the current version when unchanged)."""
    h = body_hash(body)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('api_config:' || %s))", (section,))
        cur_v = await latest_config(conn, section)
        if cur_v is not None and cur_v[2] == h:
            return cur_v[0], h
        cur = await conn.execute(
            "INSERT INTO api_config (section, body, config_hash, created_by) VALUES (%s, %s, %s, %s) RETURNING version",
            (section, Jsonb(body), h, actor))
        r = await cur.fetchone()
        assert r is not None
        await audit(conn, actor, "put_config", {"section": section, "version": int(r[0])},
                     cur_v[1] if cur_v else None, body)
    return int(r[0]), h
