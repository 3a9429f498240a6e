"""Warm start benchmark: a restarted engine reads a day of a polled plant back from PostgreSQL.

    .venv/bin/python benchmarks/warm_start.py                          # 100 machines, 25 h, every 5 s (~5.4 M rows)
    .venv/bin/python benchmarks/warm_start.py --interval 1             # 1 Hz: ~27 M rows, load alone takes minutes
    .venv/bin/python benchmarks/warm_start.py --machines 3 --hours 2 --interval 10 --repeat 1   # seconds

1. A fresh database with a random name on OEE_BENCH_DATABASE_URL's server (or --database-url; dropped at the
   end unless --keep), schema from `oee_stream.storage.migrations.migrate`. `samples` is filled with a polled
   plant (the plant model of benchmarks/engine.py): every machine sends state, total and reject once every
   --interval seconds for --hours ending at now, each machine at its own phase on a millisecond grid. The
   state alternates between running and one of the plant's stop codes every ~15 min (so a machine runs
   about half of the time); a poll's total counts the parts made since the poll before if the machine was
   running then, at ~90 % of its ideal rate on average (Poisson), ~2 % of them rejects (the generator knows
   nothing of the calendar's breaks). The rows go in with one binary COPY straight into `samples` (primary
   key and BRIN index in place, heap in time order as the live writer leaves it), then VACUUM ANALYZE (what
   autovacuum would have done by the time of a restart); both are timed and printed.
   The default --interval is 5 s (5.4 M rows at 100 machines), not 1 s: at 1 Hz the 25 h are
   100 x 3 x 90 000 = 27 M rows (3.6 GiB with indexes), and on a 2-core machine with PostgreSQL 15 the load
   alone took ~2 min (binary COPY 105-113 s + VACUUM ANALYZE 5 s), before the runs of the two paths.
2. `EngineService(plant, MqttSettings(), writer).warm_start(now=...)`: connector events, anchors, then per
   hour the product names as rows (`read_text_samples`) and the numeric samples as binary arrays, one row per
   series, parsed into NumPy columns (`read_numeric`), fed to `Engine.ingest_arrays`, then `Engine.advance`.
3. The baseline does the same work the naive way: the same connector-event and anchor reads, then per hour
   `SELECT extract(epoch FROM time)::float8, machine_id, signal, value, text_value, quality FROM samples
   WHERE time >= a AND time < b` + fetchall, one `bus.Sample` per row, converted to columns the way
   `Engine.ingest` does (`Engine.sample_arrays`), then `Engine.ingest_arrays` and `Engine.advance`.
   Each path runs in its own child process (so that its peak resident size, ru_maxrss, is its own), best of
   --repeat, each repeat with a fresh EngineService on the same writer pool. Both paths are
   `EngineService.warm_start`; the baseline passes it another span reader (`read=naive_read_span`). Both
   read the next hour on a second pooled connection while the engine takes this one (`WARM_READ_AHEAD`).
   The parts: "read" is the span reader (per hour binary arrays + parse into columns and the product rows
   for warm_start; SELECT + fetchall into tuples and one bus Sample per row for the baseline), timed by
   `TimedReader` as the wall time with a read in flight (the reads' own seconds added up are printed too);
   "engine" is the rest of warm_start's wall time (anchors, converting the samples to columns,
   `Engine.ingest_arrays`, `advance` while no read is in flight).
4. Before the table: both paths must give the same `engine.results(now)`: every window of every machine and
   roll-up, every KPI, time-class seconds and downtime reason (|a - b| <= 1e-9 * max(1, |a|, |b|)); every
   repeat of a path must also give what its first gave. main() returns 1 (and prints DIFFERS) otherwise.

PostgreSQL caches: shared_buffers is whatever the server has; a table larger than it is read through the OS
page cache. The warm_start path runs first, so it is the one that may meet a colder cache; best of --repeat.
"""

from __future__ import annotations

# ruff: noqa: E402  (thread pins must be set before NumPy is imported)
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import asyncio
import gc
import json
import math
import resource
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "src", ROOT):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from benchmarks.api import DEFAULT_DB, create_database, drop_database

TOLERANCE = 1e-9
SIGNALS = ("state", "total", "reject")
STATE_CHANGE_S = 900.0  # a state change every ~15 min
RUN_EFFICIENCY = 0.9  # parts at 90 % of the ideal rate while running
REJECT_RATE = 0.02
PG_EPOCH = 946_684_800  # 2000-01-01 UTC, the origin of PostgreSQL's binary timestamps
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
NAIVE_SQL = ("SELECT extract(epoch FROM time)::float8, machine_id, signal, value, text_value, quality FROM samples "
             "WHERE time >= %s AND time < %s")
KPI_FIELDS = ("availability", "performance", "quality", "oee", "teep", "utilization", "coverage", "total", "good",
              "reject", "ppt_s", "run_time_s", "net_run_time_s", "fully_productive_s", "stops", "mtbf_s", "mttr_s",
              "end")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ data


def _record_dtype(id_width: int, signal: str) -> np.dtype[Any]:
    """One `samples` row in binary COPY: time, machine_id, signal, value, text_value (NULL), quality."""
    return np.dtype([("nf", ">i2"), ("lt", ">i4"), ("t", ">i8"), ("lm", ">i4"), ("m", f"S{id_width}"),
                     ("ls", ">i4"), ("s", f"S{len(signal)}"), ("lv", ">i4"), ("v", ">f8"), ("lx", ">i4"),
                     ("lq", ">i4"), ("q", ">i2")])


class PolledPlant:
    """State, total and reject of every machine, once every `interval` seconds, in time order."""

    def __init__(self, machine_ids: list[str], cycle_times: np.ndarray, state_codes: dict[str, list[int]],
                 interval: float, seed: int = 1) -> None:
        widths = {len(m) for m in machine_ids}
        if len(widths) != 1:
            raise ValueError("machine ids of one width expected (benchmarks/engine.py make_plant)")
        self.ids = np.array([m.encode() for m in machine_ids])
        self.n = len(machine_ids)
        self.width = widths.pop()
        self.rate = RUN_EFFICIENCY / cycle_times  # parts/s while running
        self.running = state_codes["running"][0]
        self.stops = np.array(state_codes["stops"], np.float64)
        self.interval = interval
        self.rng = np.random.default_rng(seed)
        # each PLC polled at its own phase of the interval, on a millisecond grid (exact in timestamptz)
        self.phase_ms = self.rng.integers(0, max(1, round(interval * 1000)), self.n)
        self.is_running = np.ones(self.n, np.bool_)
        self.stop_code = np.full(self.n, self.stops[0])
        self.total = np.zeros(self.n)
        self.reject = np.zeros(self.n)
        self.dtypes = {sig: _record_dtype(self.width, sig) for sig in SIGNALS}

    def polls(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next k polls: state, total, reject, each (k, machines)."""
        n, rng = self.n, self.rng
        flip = rng.random((k, n)) < self.interval / STATE_CHANGE_S
        flips = np.cumsum(flip, axis=0)
        running = np.where(flips % 2 == 0, self.is_running[None, :], ~self.is_running[None, :])
        # the stop code of the newest flip (a new one drawn at every flip into a stop)
        drawn = self.stops[rng.integers(0, len(self.stops), (k, n))]
        last = np.maximum.accumulate(np.where(flip, np.arange(k)[:, None], -1), axis=0)
        code = np.where(last >= 0, drawn[np.maximum(last, 0), np.arange(n)[None, :]], self.stop_code[None, :])
        state = np.where(running, float(self.running), code)
        # a poll counts the parts made since the poll before: while the machine ran (in the state then)
        ran = np.concatenate([self.is_running[None, :], running[:-1]], axis=0)
        parts = rng.poisson(self.rate[None, :] * self.interval, (k, n)) * ran
        rejects = rng.binomial(parts, REJECT_RATE)
        total = self.total[None, :] + np.cumsum(parts, axis=0)
        reject = self.reject[None, :] + np.cumsum(rejects, axis=0)
        self.is_running, self.stop_code = running[-1], code[-1]
        self.total, self.reject = total[-1], reject[-1]
        return state, total.astype(np.float64), reject.astype(np.float64)

    def copy_chunks(self, start_ms: int, polls: int, chunk: int) -> Iterator[bytes]:
        """`polls` polls from `start_ms` (epoch milliseconds) as binary COPY rows, `chunk` polls at a time;
        per poll every machine's state, total and reject rows (the heap in time order)."""
        step_ms = round(self.interval * 1000)
        for p0 in range(0, polls, chunk):
            k = min(chunk, polls - p0)
            state, total, reject = self.polls(k)
            t_ms = start_ms + (p0 + np.arange(k, dtype=np.int64))[:, None] * step_ms + self.phase_ms[None, :]
            t_us = (t_ms - PG_EPOCH * 1000) * 1000
            blocks = []
            for sig, v in zip(SIGNALS, (state, total, reject), strict=True):
                rec = np.empty((k, self.n), self.dtypes[sig])
                rec["nf"], rec["lt"], rec["lm"], rec["ls"], rec["lv"] = 6, 8, self.width, len(sig), 8
                rec["lx"], rec["lq"], rec["q"] = -1, 2, 0
                rec["t"], rec["m"], rec["s"], rec["v"] = t_us, self.ids[None, :], sig.encode(), v
                blocks.append(rec.view(np.uint8).reshape(k, -1))
            yield np.concatenate(blocks, axis=1).tobytes()


def state_codes_of(plant: Any) -> dict[str, list[int]]:
    """The plant's running code and its other codes (stops, and the PLC's own 'unknown')."""
    table = plant.state_tables["t"]
    return {"running": [int(c) for c, sc in table.items() if sc.time_class == "running"],
            "stops": [int(c) for c, sc in table.items() if sc.time_class != "running"]}


def load(url: str, n_machines: int, hours: float, interval: float, now_ms: int) -> dict[str, float]:
    import psycopg
    from benchmarks import engine as be

    plant = be.make_plant(n_machines)
    src = PolledPlant([m.id for m in plant.machines], be.cycle_times_of(plant), state_codes_of(plant), interval)
    step_ms = round(interval * 1000)
    polls = int(hours * 3600 * 1000) // step_ms
    start_ms = now_ms - polls * step_ms
    chunk = max(1, 200_000 // (3 * n_machines))  # ~200 000 rows per write
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy("COPY samples (time, machine_id, signal, value, text_value, quality) "
                                            "FROM STDIN (FORMAT BINARY)") as cp:
            cp.write(COPY_HEADER)
            for data in src.copy_chunks(start_ms, polls, chunk):
                cp.write(data)
            cp.write(COPY_TRAILER)
        t_copy = time.perf_counter() - t0
        t1 = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) samples")
        t_vacuum = time.perf_counter() - t1
        row = conn.execute("SELECT count(*), pg_total_relation_size('samples') FROM samples").fetchone()
        assert row is not None
        rows, size = row
    return {"rows": rows, "copy_s": t_copy, "vacuum_s": t_vacuum, "bytes": size, "start": start_ms / 1000}


# ------------------------------------------------------------------------------------------ the two paths


class TimedReader:
    """A warm start's span reader that counts the rows it returned and its time. warm_start reads the next
    hours on other connections while the engine takes this one, so reads overlap each other and the engine:
    `work` adds up every read's seconds, `busy` is the wall time with at least one read in flight (the "read"
    part), and the rest of warm_start's wall time (anchors, conversion, ingest, advance while no read was in
    flight) is the "engine" part."""

    def __init__(self, read: Any) -> None:
        self.read = read
        self.work = 0.0
        self.busy = 0.0
        self.rows = 0
        self._active = 0
        self._since = 0.0

    async def __call__(self, conn: Any, machines: Any, start: float, end: float) -> Any:
        t0 = time.perf_counter()
        if self._active == 0:
            self._since = t0
        self._active += 1
        try:
            texts, numeric = await self.read(conn, machines, start, end)
        finally:
            t1 = time.perf_counter()
            self._active -= 1
            self.work += t1 - t0
            if self._active == 0:
                self.busy += t1 - self._since
        self.rows += len(texts) + (0 if numeric is None else len(numeric))
        return texts, numeric


async def naive_read_span(conn: Any, machines: Any, start: float, end: float) -> tuple[list[Any], None]:
    """The baseline's reader: every row as a tuple, one bus Sample per row (converted again by the engine)."""
    from oee_stream.bus import Sample
    from oee_stream.storage.schema import QUALITY_NAMES, to_utc

    cur = await conn.execute(NAIVE_SQL, (to_utc(start), to_utc(end)))
    return [Sample(m, sig, ts, text if text is not None else value, QUALITY_NAMES.get(q, "bad"))
            for ts, m, sig, value, text, q in await cur.fetchall()], None


def digest(results: list[Any]) -> dict[str, dict[str, float]]:
    """Every number of every result window, keyed by window (None as NaN)."""
    out: dict[str, dict[str, float]] = {}
    for r in results:
        nums = {f: math.nan if getattr(r, f) is None else float(getattr(r, f)) for f in KPI_FIELDS}
        nums.update({f"seconds.{c}": float(x) for c, x in r.seconds.items()})
        nums.update({f"downtime.{c}": float(x) for c, x in r.downtime_by_reason_s.items()})
        nums.update({f"loss.{c}": float(x) for c, x in r.six_big_losses_s.items()})
        out[f"{r.entity_kind}|{r.entity}|{r.window}|{r.start!r}"] = nums
    return out


def compare(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Max abs / rel difference over every number; `problems` lists what differs beyond TOLERANCE."""
    problems: list[str] = []
    if a.keys() != b.keys():
        problems.append(f"windows differ: {sorted(a.keys() ^ b.keys())[:5]}")
    max_abs = max_rel = 0.0
    numbers = 0
    for k in a.keys() & b.keys():
        x, y = a[k], b[k]
        if x.keys() != y.keys():
            problems.append(f"{k}: fields differ {sorted(x.keys() ^ y.keys())}")
        for f in x.keys() & y.keys():
            numbers += 1
            u, v = x[f], y[f]
            if math.isnan(u) or math.isnan(v):
                if not (math.isnan(u) and math.isnan(v)):
                    problems.append(f"{k} {f}: {u} vs {v}")
                continue
            d = abs(u - v)
            max_abs = max(max_abs, d)
            max_rel = max(max_rel, d / max(1.0, abs(u), abs(v)))
            if d > TOLERANCE * max(1.0, abs(u), abs(v)):
                problems.append(f"{k} {f}: {u!r} vs {v!r}")
    return {"windows": len(a.keys() & b.keys()), "numbers": numbers, "max_abs": max_abs, "max_rel": max_rel,
            "problems": problems}


async def child(kind: str, url: str, n_machines: int, now: float, repeat: int) -> dict[str, Any]:
    from benchmarks import engine as be

    from oee_stream import bus
    from oee_stream.service import EngineService, read_span
    from oee_stream.storage.writer import StorageWriter

    plant = be.make_plant(n_machines)
    base_rss = rss_mib()
    totals: list[float] = []
    readers: list[TimedReader] = []
    first: dict[str, dict[str, float]] | None = None
    repeats_agree = True
    accepted: list[int] = []
    async with StorageWriter(url) as writer:
        for _ in range(repeat):
            gc.collect()
            reader = TimedReader(read_span if kind == "warm" else naive_read_span)
            svc = EngineService(plant, bus.MqttSettings(), writer, clock=lambda: now)
            t0 = time.perf_counter()
            ws = await svc.warm_start(now=now, read=reader)
            totals.append(time.perf_counter() - t0)
            readers.append(reader)
            accepted.append(ws.samples)
            got = digest(svc.engine.results(now))
            if first is None:
                first = got
            else:
                repeats_agree &= not compare(first, got)["problems"]
            del svc
        peak = peak_rss_mib()
    best = min(range(repeat), key=lambda i: totals[i])
    return {"kind": kind, "accepted": accepted, "rows": readers[best].rows, "total_s": totals[best],
            "read_s": readers[best].busy, "read_work_s": readers[best].work,
            "engine_s": totals[best] - readers[best].busy, "totals": totals,
            "peak_rss_mib": peak, "base_rss_mib": base_rss,
            "repeats_agree": repeats_agree and len(set(accepted)) == 1 and accepted[0] == readers[best].rows,
            "results": first}


def run_child(kind: str, url: str, n_machines: int, now: float, repeat: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        out = Path(tmp) / "out.json"
        proc = subprocess.run([sys.executable, __file__, "--child", kind, url, str(n_machines), repr(now),
                               str(repeat), str(out)], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{kind} child failed ({proc.returncode}):\n"
                               f"{proc.stderr[-2000:]}{proc.stdout[-2000:]}")
        data: dict[str, Any] = json.loads(out.read_text())
        return data


# ------------------------------------------------------------------------------------------ main


def fmt_n(x: float) -> str:
    return f"{x / 1e6:.2f} M" if x >= 1e6 else (f"{x / 1e3:.1f} k" if x >= 1e3 else f"{x:.0f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, url, n, at, repeat, out = argv[1:7]
        res = asyncio.run(child(kind, url, int(n), float(at), int(repeat)))
        Path(out).write_text(json.dumps(res))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, default=100)
    ap.add_argument("--hours", type=float, default=25.0, help="history in the samples table, ending at now")
    ap.add_argument("--interval", type=float, default=5.0,
                    help="seconds between polls of a machine (each poll: state, total, reject); default 5 s, "
                         "see the module docstring")
    ap.add_argument("--repeat", type=int, default=2, help="best of N, each with a fresh engine")
    ap.add_argument("--database-url", default=os.environ.get("OEE_BENCH_DATABASE_URL", DEFAULT_DB),
                    help="a server where a database may be created (default OEE_BENCH_DATABASE_URL, else "
                         f"{DEFAULT_DB})")
    ap.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    args = ap.parse_args(argv)

    from oee_stream.storage.migrations import migrate

    admin = args.database_url
    created = create_database(admin)
    if created is None:
        return 1
    name, url = created
    now_ms = int(time.time() * 1000)
    now = now_ms / 1000
    try:
        t0 = time.perf_counter()
        migrate(url)
        t_mig = time.perf_counter() - t0
        print(f"oee-stream warm-start benchmark: {args.machines} machines x {len(SIGNALS)} signals every "
              f"{args.interval:g} s for {args.hours:g} h, numpy {np.__version__}, python {sys.version.split()[0]}, "
              f"{os.cpu_count()} cpus, best of {args.repeat}", flush=True)
        ld = load(url, args.machines, args.hours, args.interval, now_ms)
        print(f"database {name} (migrated in {t_mig:.2f} s): {fmt_n(ld['rows'])} rows generated + binary COPY in "
              f"{ld['copy_s']:.1f} s ({fmt_n(ld['rows'] / ld['copy_s'])} rows/s), "
              f"VACUUM ANALYZE {ld['vacuum_s']:.1f} s, "
              f"samples + indexes {ld['bytes'] / 2**20:.0f} MiB", flush=True)
        warm = run_child("warm", url, args.machines, now, args.repeat)
        naive = run_child("naive", url, args.machines, now, args.repeat)
    finally:
        if args.keep:
            print(f"kept database: {url}")
        else:
            drop_database(admin, name)

    cmp = compare(warm["results"], naive["results"])
    same = warm["repeats_agree"] and naive["repeats_agree"]
    ok = not cmp["problems"] and same
    ok &= warm["rows"] == naive["rows"] == warm["accepted"][0] == naive["accepted"][0]
    print(f"agreement of engine.results(now), warm_start vs baseline: {cmp['windows']} windows (machines and "
          f"roll-ups), {cmp['numbers']} numbers, max abs diff {cmp['max_abs']:.3e}, max rel diff "
          f"{cmp['max_rel']:.3e}; rows read {warm['rows']} / {naive['rows']}, accepted {warm['accepted'][0]} / "
          f"{naive['accepted'][0]}; every run of a path the same: {same} "
          f"-> {'OK' if ok else 'DIFFERS'} (tolerance {TOLERANCE:g} relative)")
    for p in cmp["problems"][:10]:
        print(f"   {p}")

    rows = warm["rows"]

    def ratio(b: float, w: float) -> str:
        return f"{b / w:.2f}x" if w > 0 else "-"

    table = [
        ("warm_start total (EngineService.warm_start)", warm["total_s"], f"{warm['peak_rss_mib']:.0f}", ""),
        ("baseline total (SELECT + fetchall, Sample, ingest)", naive["total_s"], f"{naive['peak_rss_mib']:.0f}",
         ratio(naive["total_s"], warm["total_s"])),
        ("warm_start read part (binary arrays + parse, product rows)", warm["read_s"], "", ""),
        ("baseline read part (SELECT + fetchall, one Sample per row)", naive["read_s"], "",
         ratio(naive["read_s"], warm["read_s"])),
        ("  warm_start reads' own seconds, added up", warm["read_work_s"], "", ""),
        ("  baseline reads' own seconds, added up", naive["read_work_s"], "",
         ratio(naive["read_work_s"], warm["read_work_s"])),
        ("warm_start engine part (while no read is in flight)", warm["engine_s"], "", ""),
        ("baseline engine part (Samples to columns, ingest, advance)", naive["engine_s"], "",
         ratio(naive["engine_s"], warm["engine_s"])),
    ]
    print(f"\n{'measure (' + fmt_n(rows) + ' rows read)':<58}{'seconds':>9}{'rows/s':>10}{'peak RSS MiB':>14}"
          f"{'baseline/warm':>15}")
    for label, sec, rss, r in table:
        rate = fmt_n(rows / sec) if sec > 0 and "engine part" not in label else "-"  # overlapped: no rate
        print(f"{label:<58}{sec:9.2f}{rate:>10}{rss:>14}{r:>15}")

    def runs(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in xs)

    print(f"(peak RSS: ru_maxrss of each path's own process, {warm['base_rss_mib']:.0f} / "
          f"{naive['base_rss_mib']:.0f} MiB after imports and the plant model. Parts: of the fastest run; "
          f"total per run, s: warm_start {runs(warm['totals'])}; baseline {runs(naive['totals'])})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
