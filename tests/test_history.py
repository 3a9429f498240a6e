"""The warm start's reader (storage/history.py) against a real PostgreSQL: numeric samples read as binary
arrays in pieces give exactly the rows a plain SELECT gives, none lost or doubled at the pieces' bounds."""

from __future__ import annotations

import math
import random
import struct
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import pytest

from oee_stream.storage import history

START = datetime(2026, 3, 4, 6, 0, tzinfo=UTC).timestamp()
MACHINES = ["m1", "m2", "m3"]
SIGNALS = ["state", "total"]


def _fill(url: str, rng: random.Random) -> None:
    rows: list[tuple[Any, ...]] = []
    for m in [*MACHINES, "other"]:
        for sig in [*SIGNALS, "reject"]:
            # Whole seconds (the pieces' bounds are whole seconds too) and some between them, before, in and
            # after the span read.
            for k in range(-30, 700):
                if rng.random() < 0.6:
                    ts = START + k + (rng.choice((0.0, 0.25, 0.999999)) if rng.random() < 0.3 else 0.0)
                    value = None if rng.random() < 0.05 else rng.uniform(-1e6, 1e6)
                    rows.append((datetime.fromtimestamp(ts, UTC), m, sig, value, rng.choice((0, 0, 0, 1, 2))))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.cursor().executemany(
            "INSERT INTO samples (time, machine_id, signal, value, quality) VALUES (%s, %s, %s, %s, %s)", rows)


def _plain(url: str, start: float, end: float) -> list[tuple[float, int, int, float, int]]:
    with psycopg.connect(url) as conn:
        got = conn.execute(
            "SELECT extract(epoch FROM time)::float8, machine_id, signal, value, quality FROM samples "
            "WHERE time >= %s AND time < %s AND machine_id = ANY(%s) AND signal = ANY(%s)",
            (datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC), MACHINES, SIGNALS)).fetchall()
    return sorted((t, MACHINES.index(m), SIGNALS.index(s), math.nan if v is None else v, q) for t, m, s, v, q in got)


def _columns(ns: history.NumericSamples) -> list[tuple[float, int, int, float, int]]:
    return sorted(zip(ns.t.tolist(), ns.machine.tolist(), ns.signal.tolist(), ns.value.tolist(), ns.quality.tolist(),
                      strict=True))


def _same(a: list[tuple[float, int, int, float, int]], b: list[tuple[float, int, int, float, int]]) -> bool:
    # NaN != NaN: compare the NULLs apart.
    return len(a) == len(b) and all(x[:3] == y[:3] and x[4] == y[4] and (x[3] == y[3] or (math.isnan(x[3]) and
                                                                                          math.isnan(y[3])))
                                    for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("max_rows", [7, 500, 10**6])
async def test_numeric_read_in_pieces_equals_a_plain_select(db: str, monkeypatch: pytest.MonkeyPatch,
                                                           max_rows: int) -> None:
    _fill(db, random.Random(max_rows))
    monkeypatch.setattr(history, "MAX_ROWS_PER_QUERY", max_rows)
    calls = 0
    parse = history._parse_series

    def counting(rows: list[tuple[Any, ...]]) -> history.NumericSamples:
        nonlocal calls
        calls += 1
        return parse(rows)

    monkeypatch.setattr(history, "_parse_series", counting)
    start, end = START + 0.25, START + 640.0
    async with await psycopg.AsyncConnection.connect(db) as conn:
        got = await history.read_numeric(conn, MACHINES, SIGNALS, start, end)
        queries = calls
        empty = await history.read_numeric(conn, MACHINES, SIGNALS, START - 3600.0, START - 60.0)
    want = _plain(db, start, end)
    assert len(want) > 2000
    assert _same(_columns(got), want)
    assert got.t.dtype == np.float64 and got.machine.dtype == np.int32 and got.quality.dtype == np.int32
    # A million rows fit one query after the first piece; seven rows a query take many.
    assert queries == 2 if max_rows == 10**6 else queries > 3
    assert len(empty) == 0


def _array(oid: int, fmt: str, values: list[Any], *, has_null: int = 0, width: int | None = None) -> bytes:
    w = struct.calcsize(">" + fmt) if width is None else width
    head = struct.pack(">iiiii", 1, has_null, oid, len(values), 1)
    return head + b"".join(struct.pack(">i", w) + struct.pack(">" + fmt, v) for v in values)


def test_parse_array_send_reads_and_refuses() -> None:
    got = history.parse_array_send(_array(701, "d", [1.5, -2.0, math.inf]), 701, ">f8")
    assert got.tolist() == [1.5, -2.0, math.inf]
    assert len(history.parse_array_send(struct.pack(">iii", 0, 0, 23), 23, ">i4")) == 0  # an empty array
    with pytest.raises(ValueError, match="element type 23, expected 701"):
        history.parse_array_send(_array(23, "i", [1]), 701, ">f8")
    with pytest.raises(ValueError, match="NULLs"):
        history.parse_array_send(_array(701, "d", [1.0], has_null=1), 701, ">f8")
    with pytest.raises(ValueError, match="not 2 elements of 8 bytes"):
        history.parse_array_send(_array(701, "d", [1.0, 2.0])[:-3], 701, ">f8")
    with pytest.raises(ValueError, match="not a PostgreSQL binary array"):
        history.parse_array_send(b"\x00\x00", 701, ">f8")
