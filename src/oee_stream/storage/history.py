"""The engine's inputs read back from the database: samples and connector events of a span.

A restarted engine rebuilds its windows from them (`EngineService.warm_start`): the samples table holds
every sample the engine folded in (dead and late samples go to `dead_letters` instead), and
`connector_events` every online/offline event at the time the engine applied it. Numeric samples come as one binary COPY
parsed straight into NumPy columns, so the engine gets them without a Python object per sample (the client
still takes one message per row; `benchmarks/warm_start.py` measures it); product names (text) are few and
come as rows.
"""

from __future__ import annotations

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

# PostgreSQL's binary COPY: an 11-byte signature, a flags word and a header-extension length, then per
# row a field count and per field its length and big-endian bytes; a field count of -1 ends the data. A
# timestamptz is sent as microseconds since 2000-01-01 UTC. Indices into the machine and signal lists come
# from joins (hashed), not array_position (a linear search per row).
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_ROW = np.dtype([("n", ">i2"), ("lt", ">i4"), ("t", ">i8"), ("lm", ">i4"), ("m", ">i4"), ("ls", ">i4"),
                 ("s", ">i4"), ("lv", ">i4"), ("v", ">f8"), ("lq", ">i4"), ("q", ">i4")])
_WIDTHS = {"lt": 8, "lm": 4, "ls": 4, "lv": 8, "lq": 4}
_PG_EPOCH_US = 946_684_800 * 1_000_000

_NUMERIC_COPY = """
COPY (SELECT s.time, (mm.i - 1)::int4, (ss.i - 1)::int4, coalesce(s.value, 'NaN'::float8), s.quality::int4
      FROM samples s
      JOIN unnest(%(machines)s::text[]) WITH ORDINALITY AS mm(machine_id, i) ON mm.machine_id = s.machine_id
      JOIN unnest(%(signals)s::text[]) WITH ORDINALITY AS ss(signal, i) ON ss.signal = s.signal
      WHERE s.time >= %(start)s AND s.time < %(end)s)
TO STDOUT (FORMAT BINARY)
"""

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


def parse_binary_copy(data: bytes | bytearray | memoryview) -> NumericSamples:
    """The columns of a binary COPY of (timestamptz, int4, int4, float8, int4) rows with no NULLs."""
    buf = memoryview(data)
    if len(buf) < 21 or bytes(buf[:11]) != _SIGNATURE:
        raise ValueError("not a PostgreSQL binary COPY stream")
    ext = int.from_bytes(buf[15:19], "big")
    body = buf[19 + ext:]
    if bytes(body[-2:]) != b"\xff\xff":
        raise ValueError("binary COPY stream without its end marker")
    body = body[:-2]
    if len(body) % _ROW.itemsize:
        raise ValueError(f"binary COPY body of {len(body)} bytes is not whole rows of {_ROW.itemsize}")
    rows = np.frombuffer(body, dtype=_ROW)
    if len(rows) and (bool((rows["n"] != 5).any())
                      or any(bool((rows[k] != w).any()) for k, w in _WIDTHS.items())):
        raise ValueError("binary COPY rows are not (timestamptz, int4, int4, float8, int4) without NULLs")
    # Whole microseconds since 1970 are exact in a double (below 2**53), and one IEEE division rounds
    # correctly: the same double as extract(epoch FROM time)::float8, without the server's numeric work.
    t = (rows["t"].astype(np.int64) + _PG_EPOCH_US).astype(np.float64) / 1e6
    return NumericSamples(t, rows["m"].astype(np.int32), rows["s"].astype(np.int32),
                          rows["v"].astype(np.float64), rows["q"].astype(np.int32))


async def read_numeric(conn: psycopg.AsyncConnection[Any], machines: Sequence[str], signals: Sequence[str],
                       start: float, end: float) -> NumericSamples:
    """Samples of these machines and (numeric) signals with start <= time < end, in no particular order."""
    params = {"machines": list(machines), "signals": list(signals), "start": to_utc(start), "end": to_utc(end)}
    buf = bytearray()
    async with conn.cursor() as cur, cur.copy(_NUMERIC_COPY, params) as copy:
        async for chunk in copy:
            buf += chunk
    return parse_binary_copy(buf)


def _sample(row: tuple[Any, ...]) -> Sample:
    ts, machine, signal, value, text, quality = row
    return Sample(str(machine), str(signal), float(ts), text if text is not None else value,
                  QUALITY_NAMES.get(int(quality), "bad"))  # type: ignore[arg-type]


async def read_text_samples(conn: psycopg.AsyncConnection[Any], machines: Sequence[str], signals: Sequence[str],
                            start: float, end: float) -> list[Sample]:
    """Samples of signals whose values may be text (a product name), as bus samples."""
    cur = await conn.execute(_TEXT_ROWS, {"start": to_utc(start), "end": to_utc(end), "machines": list(machines),
                                          "signals": list(signals)})
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
    cur = await conn.execute(_EVENTS, {"start": to_utc(start), "end": to_utc(end)})
    return _events(await cur.fetchall())


async def read_event_anchors(conn: psycopg.AsyncConnection[Any], before: float) -> list[ConnectorEvent]:
    """Each machine's newest connector event before `before` (grouped by event), in time order."""
    cur = await conn.execute(_EVENT_ANCHORS, {"before": to_utc(before)})
    return _events(await cur.fetchall())
