"""The engine's inputs read back from the database: samples and connector events of a span.

A restarted engine rebuilds its windows from them (`EngineService.warm_start`): the samples table holds
every sample the engine folded in (dead and late samples go to `dead_letters` instead), and
`connector_events` every online/offline event at the time the engine applied it. Numeric samples come as
arrays, one row per series, parsed straight into NumPy columns, so the engine gets them without a message or
a Python object per sample (`benchmarks/warm_start.py` measures it); product names (text) are few and come as
rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from oee_stream.bus import Sample
from oee_stream.storage.schema import QUALITY_NAMES, to_utc

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]

# Numeric samples come as one row per series, its times, values and qualities each in one array in
# PostgreSQL's binary array format (`array_send`): a row per sample (what a COPY sends) costs the client a
# message and a Python call per sample, several times the server's own work. Indices into the machine and
# signal lists come from joins (hashed), not array_position (a linear search per row). A query's arrays are
# built in the server's memory, so a span is read in pieces of at most MAX_ROWS_PER_QUERY samples, sized
# from the rate of the piece before. The span queries run hourly are never prepared: psycopg prepares a query
# on its fifth run, and PostgreSQL's generic plan of a time range it cannot see scans each series through the
# primary key (a heap page per row) and spills its arrays to disk, four times slower.
_NUMERIC_ARRAYS = """
SELECT (mm.i - 1)::int4, (ss.i - 1)::int4, array_send(array_agg(s.time)),
       array_send(array_agg(coalesce(s.value, 'NaN'::float8))), array_send(array_agg(s.quality::int4))
FROM samples s
JOIN unnest(%(machines)s::text[]) WITH ORDINALITY AS mm(machine_id, i) ON mm.machine_id = s.machine_id
JOIN unnest(%(signals)s::text[]) WITH ORDINALITY AS ss(signal, i) ON ss.signal = s.signal
WHERE s.time >= %(start)s AND s.time < %(end)s
GROUP BY mm.i, ss.i
"""
MAX_ROWS_PER_QUERY = 1_000_000
FIRST_PIECE_S = 60.0
# A timestamptz is sent as microseconds since 2000-01-01 UTC.
_PG_EPOCH_US = 946_684_800 * 1_000_000
_TIMESTAMPTZ_OID, _INT4_OID, _FLOAT8_OID = 1184, 23, 701

_TEXT_ROWS = """
SELECT extract(epoch FROM time)::float8, machine_id, signal, value, text_value, quality FROM samples
WHERE time >= %(start)s AND time < %(end)s AND machine_id = ANY(%(machines)s) AND signal = ANY(%(signals)s)
"""

# The newest sample of each series before a time: one backward step on the primary key per series.
_ANCHORS = """
SELECT extract(epoch FROM x.time)::float8, mm.machine_id, ss.signal, x.value, x.text_value, x.quality
FROM unnest(%(machines)s::text[]) AS mm(machine_id)
CROSS JOIN unnest(%(signals)s::text[]) AS ss(signal)
CROSS JOIN LATERAL (
    SELECT time, value, text_value, quality FROM samples s
    WHERE s.machine_id = mm.machine_id AND s.signal = ss.signal AND s.time < %(before)s
    ORDER BY s.time DESC LIMIT 1
) AS x
"""

_EVENTS = """
SELECT extract(epoch FROM time)::float8, connector, state, session, array_agg(machine_id ORDER BY machine_id)
FROM connector_events
WHERE time >= %(start)s AND time < %(end)s
GROUP BY time, connector, state, session
ORDER BY time, connector, state
"""

# Each machine's newest event before a time, grouped again into the connector's events. Events are read
# for every machine a connector named, in or out of the plant: the engine keys a connector's sessions by
# its whole machine list.
_EVENT_ANCHORS = """
SELECT extract(epoch FROM time)::float8, connector, state, session, array_agg(machine_id ORDER BY machine_id)
FROM (SELECT DISTINCT ON (machine_id) machine_id, time, connector, state, session FROM connector_events
      WHERE time < %(before)s
      ORDER BY machine_id, time DESC) AS newest
GROUP BY time, connector, state, session
ORDER BY time, connector, state
"""


@dataclass(frozen=True)
class NumericSamples:
    """Columns of numeric samples: indices into the machine and signal lists the query was given."""

    t: F64
    machine: I32
    signal: I32
    value: F64  # NaN where the stored value is NULL
    quality: I32  # storage quality codes (schema.QUALITY_CODES)

    def __len__(self) -> int:
        return len(self.t)


@dataclass(frozen=True)
class ConnectorEvent:
    ts: float
    connector: str
    state: str
    session: str
    machines: tuple[str, ...]


def parse_array_send(data: bytes | memoryview, oid: int, dtype: str) -> npt.NDArray[Any]:
    """The elements of a one-dimensional array without NULLs in PostgreSQL's binary format, as big-endian
    `dtype` (its width is the element's): the header (dimensions, NULL flag, element type, length, lower
    bound), then per element its length and bytes."""
    buf = memoryview(data)
    if len(buf) < 12:
        raise ValueError("not a PostgreSQL binary array")
    ndim, has_null, elem = (int.from_bytes(buf[k:k + 4], "big", signed=True) for k in (0, 4, 8))
    if elem != oid:
        raise ValueError(f"binary array of element type {elem}, expected {oid}")
    if ndim == 0:
        return np.empty(0, dtype)
    if ndim != 1 or has_null:
        raise ValueError(f"binary array with {ndim} dimensions{' and NULLs' if has_null else ''}, expected one without")
    n = int.from_bytes(buf[12:16], "big", signed=True)
    width = np.dtype(dtype).itemsize
    if len(buf) - 20 != n * (4 + width):
        raise ValueError(f"binary array body is not {n} elements of {width} bytes")
    rec = np.frombuffer(buf[20:], dtype=[("len", ">i4"), ("v", dtype)])
    if bool((rec["len"] != width).any()):
        raise ValueError(f"binary array body is not {n} elements of {width} bytes")
    return rec["v"]


def _parse_series(rows: list[tuple[Any, ...]]) -> NumericSamples:
    if not rows:
        return NumericSamples(np.empty(0), np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0),
                              np.empty(0, np.int32))
    times = [parse_array_send(r[2], _TIMESTAMPTZ_OID, ">i8") for r in rows]
    lengths = [len(x) for x in times]
    # Whole microseconds since 1970 are exact in a double (below 2**53), and one IEEE division rounds
    # correctly: the same double as extract(epoch FROM time)::float8, without the server's numeric work.
    t = (np.concatenate(times).astype(np.int64) + _PG_EPOCH_US).astype(np.float64) / 1e6
    values = np.concatenate([parse_array_send(r[3], _FLOAT8_OID, ">f8") for r in rows]).astype(np.float64)
    quality = np.concatenate([parse_array_send(r[4], _INT4_OID, ">i4") for r in rows]).astype(np.int32)
    if len(values) != len(t) or len(quality) != len(t):
        raise ValueError("a series' times, values and qualities differ in length")
    machine = np.repeat(np.array([r[0] for r in rows], np.int32), lengths)
    signal = np.repeat(np.array([r[1] for r in rows], np.int32), lengths)
    return NumericSamples(t, machine, signal, values, quality)


async def read_numeric(conn: psycopg.AsyncConnection[Any], machines: Sequence[str], signals: Sequence[str],
                       start: float, end: float) -> NumericSamples:
    """Samples of these machines and (numeric) signals with start <= time < end, in no particular order."""
    parts: list[NumericSamples] = []
    piece = FIRST_PIECE_S
    a = start
    async with conn.cursor(binary=True) as cur:
        while a < end:
            b = min(a + piece, end)
            await cur.execute(_NUMERIC_ARRAYS, {"machines": list(machines), "signals": list(signals),
                                                "start": to_utc(a), "end": to_utc(b)}, prepare=False)
            got = _parse_series(await cur.fetchall())
            parts.append(got)
            # Neighbouring pieces share a bound (the same double), so no row is read twice or missed; an
            # empty piece says little of the rate.
            piece = (float(max(1.0, math.floor(MAX_ROWS_PER_QUERY * (b - a) / len(got)))) if len(got)
                     else piece * 16.0)
            a = b
    if len(parts) == 1:
        return parts[0]
    return NumericSamples(*(np.concatenate([getattr(p, f) for p in parts])
                            for f in ("t", "machine", "signal", "value", "quality")))


def _sample(row: tuple[Any, ...]) -> Sample:
    ts, machine, signal, value, text, quality = row
    return Sample(str(machine), str(signal), float(ts), text if text is not None else value,
                  QUALITY_NAMES.get(int(quality), "bad"))  # type: ignore[arg-type]


async def read_text_samples(conn: psycopg.AsyncConnection[Any], machines: Sequence[str], signals: Sequence[str],
                            start: float, end: float) -> list[Sample]:
    """Samples of signals whose values may be text (a product name), as bus samples."""
    cur = await conn.execute(_TEXT_ROWS, {"start": to_utc(start), "end": to_utc(end), "machines": list(machines),
                                          "signals": list(signals)}, prepare=False)
    return [_sample(r) for r in await cur.fetchall()]


async def read_anchors(conn: psycopg.AsyncConnection[Any], machines: Sequence[str], signals: Sequence[str],
                       before: float) -> list[Sample]:
    """The newest sample of every (machine, signal) before `before`: what each series holds at that time."""
    cur = await conn.execute(_ANCHORS, {"machines": list(machines), "signals": list(signals),
                                        "before": to_utc(before)})
    return [_sample(r) for r in await cur.fetchall()]


def _events(rows: list[tuple[Any, ...]]) -> list[ConnectorEvent]:
    return [ConnectorEvent(float(ts), str(c), str(st), str(ses), tuple(ms)) for ts, c, st, ses, ms in rows]


async def read_connector_events(conn: psycopg.AsyncConnection[Any], start: float, end: float) -> list[ConnectorEvent]:
    """Connector events with start <= time < end, one per connector event (its machines together), in order."""
    cur = await conn.execute(_EVENTS, {"start": to_utc(start), "end": to_utc(end)}, prepare=False)
    return _events(await cur.fetchall())


async def read_event_anchors(conn: psycopg.AsyncConnection[Any], before: float) -> list[ConnectorEvent]:
    """Each machine's newest connector event before `before` (grouped by event), in time order."""
    cur = await conn.execute(_EVENT_ANCHORS, {"before": to_utc(before)})
    return _events(await cur.fetchall())
