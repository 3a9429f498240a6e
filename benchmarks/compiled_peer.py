"""Compiled per-sample peers for benchmarks/engine.py: the rolling-window KPIs from numba loops.

This is evidence for a design decision, not part of the engine. The engine is vectorized NumPy array work
with no per-sample Python loop; these peers measure what a compiled kernel does on exactly the same data, so
that the engine's samples/s can be compared with what a single-core compiled implementation reaches. Both
mean exactly what `engine.pandas_kpis` computes (A / P / Q / OEE of the rolling windows [now - L, now)).

`numba_kpis` -- one pass, no history. The kernel walks the batch once in arrival order (the batch is in time
order across machines) and keeps only small per-machine / per-series state: the class in force and since
when, the start of an open unplanned run, the last value of each counter. Nothing is sorted and nothing is
kept: it computes the 4 windows at one `now`, so a later window needs the samples again. An upper bound.

Two choices make one pass cheap and are exact rather than approximations:
- Consecutive state samples of the same class are one segment. Splitting a segment does not change any
  overlap sum: all times lie in one binade of float64 (epoch seconds), so every difference, clip and break
  overlap is an exact multiple of the same ulp and their sums are exact. An unplanned run is therefore
  one interval, and deciding micro vs unplanned when it closes needs only its start, not pending sums.
- The rolling windows share their end (`now`) and are nested, so time and counts are accumulated per
  region between consecutive window starts, and a window is the sum of the regions inside it. A counter
  increment costs one add instead of one per window. (Exact for whole-number counts, as in the benchmark;
  fractional counter values are summed in another order than pandas, a difference in the last bits.)

`numba_history` + `history_kpis` -- the same pass keeping history, as a compiled engine must: every state
row and every counter increment is appended to per-machine tables of C structs (layout below, in the
"with history" section), with cumulative sums, so that any window at any later `now` is a look-up.
- State: a row whenever the class or the reason (the state code) changes, as the engine's rows; each row
  holds its time, the productive clock (seconds since origin minus breaks) and the productive seconds of
  each class before it. Counters: a row per nonzero increment (rollover / reset as above) with the
  cumulative count and ideal seconds, per series (machine, total / reject).
- Micro stops: the first row of each machine's open unplanned run is kept. When a row of another class
  closes the run before the threshold, the run's rows are rewritten in place as micro stops (their class,
  and the run's seconds in the cumulative sums of its later rows and of the closing row move from
  unplanned to micro; exact). A run still open is decided at look-up time from its start and `now`.
- Capacity: a first counting pass over the batch (samples per machine and signal) sizes every machine's
  tables to an upper bound (rows <= samples); they are laid out one after the other in flat arrays. Its
  time is counted in the history pass, as are the allocation and page faults of the new tables.
- Look-ups: per machine and window, binary search (galloping back from the newest row) in the state table
  at both ends and in each counter table; breaks by binary search in the calendar's break list.
benchmarks/engine.py checks it against the engine at the benchmark's `now`; it also agrees with the engine
and pandas at a later `now` with no new data (the windows slide, open runs are decided again).

Why the history peer is still a bound on a compiled engine, not an engine: one batch, in time order, so no
late or out-of-order samples and no re-derivation of a machine (the engine re-derives what a late sample
changes), and no sample log kept for it; no validation, lateness or watermarks (ingest_arrays); capacities
known up front (a streaming engine grows and compacts per-machine arenas) and no pruning; one UTC calendar
with fixed breaks for every machine (no calendar exceptions, time zones, unscheduled time, shift / day /
hour windows); only the state, total and reject signals (no run bit, products, good counters, start-up
rejects, gaps, offline / stale / no-count stops, stop counts, bad-quality rows); one thread.

numba is optional: `available()` says whether it can be used; importing this module never needs it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

try:
    from numba import njit

    _NUMBA = True
except ImportError:  # the peer is skipped, the rest of the benchmark still runs
    _NUMBA = False

    def njit(*_args: Any, **_kwargs: Any) -> Any:
        def wrap(fn: Any) -> Any:
            return fn

        return wrap


# Copies of benchmarks/engine.py and oee_stream.engine.plant constants: engine.py imports this module at
# its top, so importing it back here would be circular. `warmup()` checks that the copies still match.
ROLLING_S = (900.0, 3600.0, 8 * 3600.0, 24 * 3600.0)
THRESHOLD = 120.0
COUNTER_MOD = 2.0**32
STATE, TOTAL, REJECT = 0, 2, 3  # signal codes
GOOD = 0  # quality code
RUNNING, PLANNED_STOP, UNPLANNED_STOP, MICRO_STOP, UNKNOWN = 2, 3, 4, 5, 6  # class ids
N_CLASS = 7
CODE_CLASS = {0: UNPLANNED_STOP, 1: RUNNING, 2: PLANNED_STOP, 3: UNPLANNED_STOP, 4: UNKNOWN}

# kernel error codes -> message
_ERRORS = {
    1: "samples are not in time order (the kernel is one pass in arrival order)",
    2: "a state sample precedes origin",
    3: "a machine index is out of range",
}


def available() -> bool:
    """True when numba can be imported (the peer is optional)."""
    return _NUMBA


@njit(cache=True, inline="always")
def _bad_sample(ti: float, last_t: float, mi: int, si: int, n_m: int, origin: float) -> int:
    """0, or the _ERRORS code of a sample the one-pass kernels cannot take."""
    if ti < last_t:
        return 1
    if mi < 0 or mi >= n_m:
        return 3
    if si == STATE and ti < origin:
        return 2
    return 0


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _add_segment(acc: np.ndarray, mi: int, c: int, t0: float, t1: float, starts: np.ndarray, now: float,
                 breaks: np.ndarray) -> None:
    """Seconds of [t0, t1) minus breaks, per region; region j is [starts[j], starts[j - 1] or now)."""
    end = now
    for j in range(starts.shape[0]):
        a = starts[j]
        lo = max(t0, a)
        hi = min(t1, end)
        if hi > lo:
            excl = 0.0  # summed first, then subtracted: the order pandas_kpis uses
            for k in range(breaks.shape[0]):
                ov = min(hi, breaks[k, 1]) - max(lo, breaks[k, 0])
                if ov > 0.0:
                    excl += ov
            acc[mi, c, j] += (hi - lo) - excl
        if t0 >= a:  # the segment starts inside this region: older regions get nothing
            break
        end = a


@njit(cache=True, nogil=True, fastmath=False)
def _kernel(m: np.ndarray, s: np.ndarray, t: np.ndarray, v: np.ndarray, q: np.ndarray, now: float,
            origin: float, threshold: float, starts: np.ndarray, breaks: np.ndarray, code_class: np.ndarray,
            secs: np.ndarray, ctr: np.ndarray) -> int:
    """One pass over the samples in arrival order. Fills secs (machines, classes, regions) and ctr
    (machines, counter, [last value, count per region 1..]). Returns 0, or an error code of _ERRORS."""
    n_m = secs.shape[0]
    n_reg = starts.shape[0]
    n_code = code_class.shape[0]
    cur = np.full(n_m, UNKNOWN, np.int64)  # class in force per machine; every machine starts unknown
    since = np.full(n_m, origin)  # start of the segment in force (for unplanned: start of the run)
    last_t = -np.inf
    for i in range(t.shape[0]):
        ti = t[i]
        if ti >= now or q[i] != GOOD:
            continue
        mi = m[i]
        si = s[i]
        vi = v[i]
        err = _bad_sample(ti, last_t, mi, si, n_m, origin)
        if err:
            return err
        last_t = ti
        if si == STATE:
            # the code truncated toward zero, as pandas' astype("int64"); unmapped codes (and NaN) unknown
            c = UNKNOWN
            if vi > -1.0 and vi < n_code:
                c = code_class[int(vi)]
            old = cur[mi]
            if c != old:  # same class: the segment simply goes on (an exact duplicate is one too)
                t0 = since[mi]
                if old == UNPLANNED_STOP and ti - t0 < threshold:
                    old = MICRO_STOP
                _add_segment(secs, mi, old, t0, ti, starts, now, breaks)
                cur[mi] = c
                since[mi] = ti
        elif si == TOTAL or si == REJECT:
            k = si - TOTAL
            p = ctr[mi, k, 0]
            d = vi - p
            if d < 0.0:
                d = d + COUNTER_MOD if p >= 0.9 * COUNTER_MOD else vi  # rollover, else a reset
            elif p != p:
                d = 0.0  # first sample of the series (an exact duplicate gives d = 0 too)
            ctr[mi, k, 0] = vi
            # 1 + the region of ti (the number of window starts after it); beyond n_reg: before every window
            r = 1
            for j in range(n_reg):
                r += ti < starts[j]
            if r <= n_reg:
                ctr[mi, k, r] += d
    for mi in range(n_m):  # close the segment in force at now (an open run counts up to now)
        old = cur[mi]
        t0 = since[mi]
        if old == UNPLANNED_STOP and now - t0 < threshold:
            old = MICRO_STOP
        _add_segment(secs, mi, old, t0, now, starts, now, breaks)
    return 0


def _code_table(code_class: dict[int, int]) -> np.ndarray:
    table = np.full(max(code_class) + 1, UNKNOWN, np.int64)
    for code, cls in code_class.items():
        table[code] = cls
    return table


def _breaks_of(origin: float, now: float) -> np.ndarray:
    # imported late: engine.py imports this module at its top (see the constants above)
    from engine import break_intervals

    return np.asarray(break_intervals(origin, now), dtype=np.float64).reshape(-1, 2)


def numba_kpis(b: Any, *, n_machines: int, cycle_times: np.ndarray, now: float, origin: float,
               threshold: float = THRESHOLD, breaks: np.ndarray | None = None,
               windows_s: tuple[float, ...] = ROLLING_S,
               code_class: dict[int, int] | None = None) -> dict[str, np.ndarray]:
    """A/P/Q/OEE arrays of shape (n_machines, len(windows_s)), same meaning as engine.pandas_kpis.

    `b` is an engine.Batch (m, s, t, v, q arrays in time order). `breaks` is a float64 (k, 2) array of
    break intervals; by default engine.break_intervals(origin, now)."""
    if not _NUMBA:
        raise RuntimeError("numba is not installed")
    brk = _breaks_of(origin, now) if breaks is None else np.ascontiguousarray(breaks, dtype=np.float64)
    # regions are laid out from the shortest window to the longest (nested windows ending at now)
    order = sorted(range(len(windows_s)), key=lambda i: windows_s[i])
    starts = np.array([now - windows_s[i] for i in order], dtype=np.float64)
    n_reg = len(starts)
    secs = np.zeros((n_machines, N_CLASS, n_reg))
    # One 64-byte line per (machine, counter) holding its last value and its counts: with 10 000 machines the
    # state does not fit in L2, and a counter sample then costs one cache miss instead of two.
    width = 8 * -(-(n_reg + 1) // 8)
    raw = np.zeros(n_machines * 2 * width + 8)
    off = (-raw.ctypes.data % 64) // 8
    ctr = raw[off:off + n_machines * 2 * width].reshape(n_machines, 2, width)
    ctr[:, :, 0] = np.nan  # no sample of the series yet
    err = _kernel(np.ascontiguousarray(b.m, np.int64), np.ascontiguousarray(b.s, np.int8),
                  np.ascontiguousarray(b.t, np.float64), np.ascontiguousarray(b.v, np.float64),
                  np.ascontiguousarray(b.q, np.int8), float(now), float(origin), float(threshold), starts,
                  brk, _code_table(CODE_CLASS if code_class is None else code_class), secs, ctr)
    if err:
        raise ValueError(f"numba_kpis: {_ERRORS[err]}")
    # a window is the sum of the regions inside it; back to the caller's window order
    secs = np.cumsum(secs, axis=2)
    counts = np.cumsum(ctr[:, :, 1:n_reg + 1], axis=2)
    back = np.argsort(np.array(order))  # of the windows, not of the samples
    secs, counts = secs[:, :, back], counts[:, :, back]
    total, reject = counts[:, 0], counts[:, 1]
    return _ratios(secs, total, reject, total * np.asarray(cycle_times, dtype=np.float64)[:, None])


def _ratios(secs: np.ndarray, total: np.ndarray, reject: np.ndarray, ideal: np.ndarray) -> dict[str, np.ndarray]:
    """A/P/Q/OEE from seconds per class (machines, classes, windows) and counts (machines, windows)."""
    running, micro = secs[:, RUNNING], secs[:, MICRO_STOP]
    ppt = running + secs[:, PLANNED_STOP] + secs[:, UNPLANNED_STOP] + micro + secs[:, UNKNOWN]
    run = running + micro
    with np.errstate(divide="ignore", invalid="ignore"):
        a_ = np.where(ppt > 0, run / ppt, np.nan)
        p_ = np.where(run > 0, ideal / run, np.nan)
        q_ = np.where(total > 0, (total - reject) / total, np.nan)
        oee = np.where(ppt > 0, np.where(total > 0, ideal / ppt * np.nan_to_num(q_), 0.0), np.nan)
    return {"A": a_, "P": p_, "Q": q_, "OEE": oee}


# ------------------------------------------------------------------------------------------ with history
#
# The second peer does the same per-sample work, but appends rows to per-machine history tables, as a
# compiled engine would, and then looks the windows up in those tables by binary search. Each table is a
# flat array of C structs (NumPy structured dtypes; numba reads and writes their fields in place):
#   state row (64 bytes, one cache line)  t, p (productive clock at t), cum[5] (productive seconds of each
#       state class, running .. unknown, before t), cls (int8), reason (int32: the state code; no data;
#       unmapped). A row whenever the class or the reason changes, as in the engine.
#   counter row (24 bytes)  t, count and ideal seconds summed up to and including the row; a row per
#       nonzero increment (as in the engine). One table per series (machine, total / reject).
# Machine `mi` owns state rows [s_off[mi], s_off[mi + 1]) and series `mi * 2 + k` counter rows
# [c_off[..], c_off[.. + 1]); the capacities come from a counting pass over the batch (rows <= samples).
# The productive clock is seconds since origin minus break seconds, so the seconds of class c in [a, b) are
# S_c(b) - S_c(a), S_c(x) = cum[c] of the last row j at or before x, + clock(x) - p_j if cls_j is c. Every
# term is a multiple of the same ulp (one binade, see above), so this is exact like the one-pass kernel.
STATE_ROW = np.dtype([("t", "f8"), ("p", "f8"), ("cum", "f8", (5,)), ("cls", "i1"), ("reason", "i4")],
                     align=True)
COUNTER_ROW = np.dtype([("t", "f8"), ("count", "f8"), ("ideal", "f8")])
SERIES = np.dtype([("last", "f8"), ("count", "f8"), ("ideal", "f8"), ("pos", "i8")])  # a series' hot state
C0 = RUNNING  # cum[c - C0]: the state classes are running .. unknown
R_NO_DATA, R_UNMAPPED = 0, 1  # reasons; a mapped state code c has reason 2 + c


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _clock(x: float, origin: float, b0: np.ndarray, b1: np.ndarray, bcum: np.ndarray) -> float:
    """Productive seconds in [origin, x): breaks (sorted, disjoint, clipped to origin) removed."""
    lo, hi = 0, b0.shape[0]
    while lo < hi:  # lo = the number of breaks that start before x
        mid = (lo + hi) >> 1
        if b0[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    p = x - origin
    if lo > 0:
        p -= bcum[lo - 1] + (min(x, b1[lo - 1]) - b0[lo - 1])
    return p


@njit(cache=True, nogil=True)
def _count_rows(m: np.ndarray, s: np.ndarray, counts: np.ndarray) -> None:
    """Samples per machine and signal code (codes above 3 in column 3): the tables' capacities."""
    n_m = counts.shape[0]
    for i in range(m.shape[0]):
        mi = m[i]
        if mi >= 0 and mi < n_m:  # an index out of range is reported by the build pass if the sample is used
            counts[mi, min(max(s[i], 0), 3)] += 1


@njit(cache=True, nogil=True, fastmath=False)
def _build(m: np.ndarray, s: np.ndarray, t: np.ndarray, v: np.ndarray, q: np.ndarray, now: float,
           origin: float, threshold: float, code_class: np.ndarray, code_reason: np.ndarray,
           cycle_times: np.ndarray, b0: np.ndarray, b1: np.ndarray, bcum: np.ndarray, s_off: np.ndarray,
           s_pos: np.ndarray, srow: np.ndarray, run_row: np.ndarray, c_off: np.ndarray, crow: np.ndarray,
           ser: np.ndarray) -> int:
    """One pass in arrival order appending history rows. Returns 0, or an error code of _ERRORS.

    Micro stops: run_row[mi] is the first row of the machine's open unplanned run (consecutive unplanned
    rows, of any reason). When a row of another class closes it before the threshold, the run's rows become
    micro stops in place: their class, and the run's seconds already summed into the cum of its later rows
    and of the closing row, move from unplanned to micro (exact: the same terms subtracted again)."""
    n_m = run_row.shape[0]
    n_code = code_class.shape[0]
    nb = b0.shape[0]
    for mi in range(n_m):  # every machine starts unknown (no data) at origin
        j = s_off[mi]
        srow[j].t = origin
        srow[j].p = 0.0
        for c in range(5):
            srow[j].cum[c] = 0.0
        srow[j].cls = UNKNOWN
        srow[j].reason = R_NO_DATA
        s_pos[mi] = j + 1
        run_row[mi] = -1
        for k in range(2):
            ser[mi * 2 + k].last = np.nan  # no sample of the series yet
            ser[mi * 2 + k].count = 0.0
            ser[mi * 2 + k].ideal = 0.0
            ser[mi * 2 + k].pos = c_off[mi * 2 + k]
    kb = 0  # the number of breaks that start before the current sample (the batch is in time order)
    last_t = -np.inf
    for i in range(t.shape[0]):
        ti = t[i]
        if ti >= now or q[i] != GOOD:
            continue
        mi = m[i]
        si = s[i]
        vi = v[i]
        err = _bad_sample(ti, last_t, mi, si, n_m, origin)
        if err:
            return err
        last_t = ti
        if si == STATE:
            c = UNKNOWN
            r = R_UNMAPPED
            if vi > -1.0 and vi < n_code:  # the code truncated toward zero, as the one-pass kernel
                code = int(vi)
                c = code_class[code]
                r = code_reason[code]
            j = s_pos[mi] - 1  # the machine's last row
            old = srow[j].cls
            if c == old and r == srow[j].reason:
                continue
            while kb < nb and b0[kb] < ti:
                kb += 1
            p = ti - origin
            if kb > 0:
                p -= bcum[kb - 1] + (min(ti, b1[kb - 1]) - b0[kb - 1])
            k = j + 1
            s_pos[mi] = k + 1
            srow[k].t = ti
            srow[k].p = p
            for cc in range(5):
                srow[k].cum[cc] = srow[j].cum[cc]
            srow[k].cum[old - C0] += p - srow[j].p
            srow[k].cls = c
            srow[k].reason = r
            rs = run_row[mi]
            if c == UNPLANNED_STOP:
                if rs < 0:
                    run_row[mi] = k
            elif rs >= 0:  # the open run closes at ti
                run_row[mi] = -1
                if ti - srow[rs].t < threshold:
                    p0 = srow[rs].p
                    for jj in range(rs, k):
                        srow[jj].cls = MICRO_STOP
                    for jj in range(rs + 1, k + 1):
                        d = srow[jj].p - p0
                        srow[jj].cum[UNPLANNED_STOP - C0] -= d
                        srow[jj].cum[MICRO_STOP - C0] += d
        elif si == TOTAL or si == REJECT:
            sr = ser[mi * 2 + si - TOTAL]
            p = sr.last
            d = vi - p
            if d < 0.0:
                d = d + COUNTER_MOD if p >= 0.9 * COUNTER_MOD else vi  # rollover, else a reset
            elif p != p:
                d = 0.0  # first sample of the series
            sr.last = vi
            if d != 0.0:
                w = sr.pos
                sr.pos = w + 1
                sr.count += d
                sr.ideal += d * cycle_times[mi]
                crow[w].t = ti
                crow[w].count = sr.count
                crow[w].ideal = sr.ideal
    return 0


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _state_cum(x: float, lo: int, hi: int, srow: np.ndarray, rs: int, open_micro: bool, origin: float,
               b0: np.ndarray, b1: np.ndarray, bcum: np.ndarray, out: np.ndarray) -> None:
    """out[c - C0] = productive seconds of class c in [origin, x) of the machine whose rows are [lo, hi)."""
    # The first row after x: windows end near now, so search galloping back from the last row, then bisect.
    a, b, step = hi - 1, hi, 1
    while a >= lo and srow[a].t > x:
        b = a
        a -= step
        step *= 2
    a = max(a + 1, lo)
    while a < b:
        mid = (a + b) >> 1
        if srow[mid].t <= x:
            a = mid + 1
        else:
            b = mid
    j = a - 1
    if j < lo:
        for c in range(5):
            out[c] = 0.0
        return
    row = srow[j]
    for c in range(5):
        out[c] = row.cum[c]
    px = _clock(x, origin, b0, b1, bcum)
    out[row.cls - C0] += px - row.p
    if open_micro and j >= rs:  # inside the open run, which is a micro stop at this `now`
        d = px - srow[rs].p
        out[UNPLANNED_STOP - C0] -= d
        out[MICRO_STOP - C0] += d


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _count_before(x: float, lo: int, hi: int, crow: np.ndarray) -> int:
    """The last counter row of [lo, hi) strictly before x, or lo - 1 (galloping back from the end)."""
    a, b, step = hi - 1, hi, 1
    while a >= lo and crow[a].t >= x:
        b = a
        a -= step
        step *= 2
    a = max(a + 1, lo)
    while a < b:
        mid = (a + b) >> 1
        if crow[mid].t < x:
            a = mid + 1
        else:
            b = mid
    return a - 1


@njit(cache=True, nogil=True, fastmath=False)
def _lookup(win_a: np.ndarray, win_b: np.ndarray, now: float, origin: float, threshold: float,
            b0: np.ndarray, b1: np.ndarray, bcum: np.ndarray, s_off: np.ndarray, s_pos: np.ndarray,
            srow: np.ndarray, run_row: np.ndarray, c_off: np.ndarray, ser: np.ndarray, crow: np.ndarray,
            secs: np.ndarray, cnt: np.ndarray) -> None:
    """Windows [win_a[w], win_b[w]) (win_b <= now) of every machine from the tables: secs (machines, classes,
    windows), cnt (machines, [total, reject, ideal seconds of total], windows). An end equal to the previous
    window's is searched once."""
    n_m = secs.shape[0]
    at_a = np.empty(5)
    at_b = np.empty(5)
    cb = np.empty(3)
    for mi in range(n_m):
        lo, hi = s_off[mi], s_pos[mi]
        rs = run_row[mi]
        open_micro = rs >= 0 and now - srow[rs].t < threshold  # the open run is decided at now
        t_lo, t_hi = c_off[mi * 2], ser[mi * 2].pos
        r_lo, r_hi = c_off[mi * 2 + 1], ser[mi * 2 + 1].pos
        for w in range(win_a.shape[0]):
            a, b = win_a[w], win_b[w]
            if w == 0 or b != win_b[w - 1]:
                _state_cum(b, lo, hi, srow, rs, open_micro, origin, b0, b1, bcum, at_b)
                jt = _count_before(b, t_lo, t_hi, crow)
                jr = _count_before(b, r_lo, r_hi, crow)
                cb[0] = crow[jt].count if jt >= t_lo else 0.0
                cb[1] = crow[jr].count if jr >= r_lo else 0.0
                cb[2] = crow[jt].ideal if jt >= t_lo else 0.0
            _state_cum(a, lo, hi, srow, rs, open_micro, origin, b0, b1, bcum, at_a)
            for c in range(5):
                secs[mi, C0 + c, w] = at_b[c] - at_a[c]
            jt = _count_before(a, t_lo, t_hi, crow)
            jr = _count_before(a, r_lo, r_hi, crow)
            cnt[mi, 0, w] = cb[0] - (crow[jt].count if jt >= t_lo else 0.0)
            cnt[mi, 1, w] = cb[1] - (crow[jr].count if jr >= r_lo else 0.0)
            cnt[mi, 2, w] = cb[2] - (crow[jt].ideal if jt >= t_lo else 0.0)


class History(NamedTuple):
    """The tables of `numba_history` (layout above), complete for the samples before `now`."""

    now: float
    origin: float
    threshold: float
    b0: np.ndarray  # breaks: starts (sorted, clipped to origin), ends, lengths of the breaks before each
    b1: np.ndarray
    bcum: np.ndarray
    s_off: np.ndarray  # (machines + 1,) first state row of each machine
    s_pos: np.ndarray  # (machines,) one past its last row
    srow: np.ndarray  # STATE_ROW
    run_row: np.ndarray  # (machines,) first row of the open unplanned run, or -1
    c_off: np.ndarray  # (2 machines + 1,) first row of each counter series (machine * 2 + [total, reject])
    ser: np.ndarray  # SERIES per series; .pos is one past its last row
    crow: np.ndarray  # COUNTER_ROW

    @property
    def state_rows(self) -> int:
        return int((self.s_pos - self.s_off[:-1]).sum())

    @property
    def counter_rows(self) -> int:
        return int((self.ser["pos"] - self.c_off[:-1]).sum())

    def nbytes(self) -> int:
        """Bytes allocated for the tables (capacity, not just the rows used)."""
        return int(sum(getattr(self, f).nbytes for f in ("s_off", "s_pos", "srow", "run_row", "c_off", "ser",
                                                          "crow")))


def _aligned_empty(n: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialized array of n records starting on a 64-byte boundary (a cache line)."""
    raw = np.empty(n * dtype.itemsize + 64, np.uint8)
    off = -raw.ctypes.data % 64
    return raw[off:off + n * dtype.itemsize].view(dtype)


def _break_table(brk: np.ndarray, origin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Breaks sorted, clipped to start at origin, empty ones dropped; with the lengths of those before each."""
    brk = brk.reshape(-1, 2)
    brk = brk[np.argsort(brk[:, 0], kind="stable")]
    b0 = np.maximum(brk[:, 0], origin)
    keep = brk[:, 1] > b0
    b0, b1 = np.ascontiguousarray(b0[keep]), np.ascontiguousarray(brk[keep, 1])
    if np.any(b0[1:] < b1[:-1]):
        raise ValueError("breaks overlap")
    bcum = np.zeros(len(b0))  # bcum[k] = length of the breaks before break k (exact: whole seconds)
    np.cumsum((b1 - b0)[:-1], out=bcum[1:])
    return b0, b1, bcum


def numba_history(b: Any, *, n_machines: int, cycle_times: np.ndarray, now: float, origin: float,
                  threshold: float = THRESHOLD, breaks: np.ndarray | None = None,
                  code_class: dict[int, int] | None = None, into: History | None = None) -> History:
    """Append every sample of `b` before `now` to per-machine history tables sized by a counting pass.

    `b` is an engine.Batch (m, s, t, v, q in time order); the other arguments as numba_kpis. With `into`
    (tables of the same layout, e.g. from the same batch) its arrays are written over instead of new ones:
    the tables are then already in memory, as a streaming engine's reused arenas are (no page faults)."""
    if not _NUMBA:
        raise RuntimeError("numba is not installed")
    brk = _breaks_of(origin, now) if breaks is None else np.ascontiguousarray(breaks, dtype=np.float64)
    b0, b1, bcum = _break_table(brk, float(origin))
    cmap = CODE_CLASS if code_class is None else code_class
    if not all(RUNNING <= c <= UNKNOWN for c in cmap.values()):
        raise ValueError("numba_history: state codes map to the classes running .. unknown")
    code_reason = np.full(max(cmap) + 1, R_UNMAPPED, np.int32)
    code_reason[list(cmap)] = 2 + np.array(list(cmap), np.int32)
    m = np.ascontiguousarray(b.m, np.int64)
    s = np.ascontiguousarray(b.s, np.int8)
    # capacities: one state row per state sample (+ the origin row), one counter row per counter sample
    counts = np.zeros((n_machines, 4), np.int64)
    _count_rows(m, s, counts)
    s_off = np.zeros(n_machines + 1, np.int64)
    np.cumsum(counts[:, STATE] + 1, out=s_off[1:])
    c_off = np.zeros(2 * n_machines + 1, np.int64)
    np.cumsum(counts[:, TOTAL:REJECT + 1].ravel(), out=c_off[1:])
    if into is not None and np.array_equal(into.s_off, s_off) and np.array_equal(into.c_off, c_off):
        h = into._replace(now=float(now), origin=float(origin), threshold=float(threshold), b0=b0, b1=b1, bcum=bcum)
    else:
        h = History(float(now), float(origin), float(threshold), b0, b1, bcum, s_off,
                    np.empty(n_machines, np.int64), _aligned_empty(int(s_off[-1]), STATE_ROW),
                    np.empty(n_machines, np.int64), c_off, _aligned_empty(2 * n_machines, SERIES),
                    _aligned_empty(int(c_off[-1]), COUNTER_ROW))
    err = _build(m, s, np.ascontiguousarray(b.t, np.float64), np.ascontiguousarray(b.v, np.float64),
                 np.ascontiguousarray(b.q, np.int8), h.now, h.origin, h.threshold, _code_table(cmap), code_reason,
                 np.ascontiguousarray(cycle_times, dtype=np.float64), b0, b1, bcum, s_off, h.s_pos, h.srow,
                 h.run_row, c_off, h.crow, h.ser)
    if err:
        raise ValueError(f"numba_history: {_ERRORS[err]}")
    return h


def history_kpis(h: History, *, now: float | None = None,
                 windows_s: tuple[float, ...] = ROLLING_S) -> dict[str, np.ndarray]:
    """A/P/Q/OEE (machines, windows) of the rolling windows [now - L, now), looked up in the tables.

    `now` defaults to the tables' own; a later `now` (no newer samples) slides the windows and decides the
    open runs at that moment, as the engine's timeline does."""
    now = h.now if now is None else float(now)
    if now < h.now:
        raise ValueError("history_kpis: now is before the tables' now")
    b0, b1, bcum = (h.b0, h.b1, h.bcum) if now == h.now else _break_table(_breaks_of(h.origin, now), h.origin)
    n_m, n_w = h.s_pos.shape[0], len(windows_s)
    win_a = np.array([now - x for x in windows_s], dtype=np.float64)
    win_b = np.full(n_w, now)
    secs = np.zeros((n_m, N_CLASS, n_w))
    cnt = np.empty((n_m, 3, n_w))
    _lookup(win_a, win_b, now, h.origin, h.threshold, b0, b1, bcum, h.s_off, h.s_pos, h.srow, h.run_row,
            h.c_off, h.ser, h.crow, secs, cnt)
    return _ratios(secs, cnt[:, 0], cnt[:, 1], cnt[:, 2])


def numba_history_kpis(b: Any, *, n_machines: int, cycle_times: np.ndarray, now: float, origin: float,
                       threshold: float = THRESHOLD, breaks: np.ndarray | None = None,
                       windows_s: tuple[float, ...] = ROLLING_S,
                       code_class: dict[int, int] | None = None) -> dict[str, np.ndarray]:
    """numba_history + history_kpis: what numba_kpis computes, through the history tables."""
    h = numba_history(b, n_machines=n_machines, cycle_times=cycle_times, now=now, origin=origin,
                      threshold=threshold, breaks=breaks, code_class=code_class)
    return history_kpis(h, windows_s=windows_s)


def _check_constants() -> None:
    """The copied constants must still be what engine.py and oee_stream use."""
    import engine

    from oee_stream.engine import plant

    ours = (ROLLING_S, THRESHOLD, COUNTER_MOD, CODE_CLASS, (STATE, TOTAL, REJECT, GOOD),
            (RUNNING, PLANNED_STOP, UNPLANNED_STOP, MICRO_STOP, UNKNOWN))
    theirs = (tuple(s for _n, s in engine.ROLLING), engine.THRESHOLD, engine.COUNTER_MOD, engine.CODE_CLASS,
              (plant.STATE, plant.TOTAL, plant.REJECT, plant.GOOD),
              (plant.RUNNING, plant.PLANNED_STOP, plant.UNPLANNED_STOP, plant.MICRO_STOP, plant.UNKNOWN))
    if ours != theirs:
        raise RuntimeError(f"compiled_peer constants are stale: {ours} != {theirs}")


def warmup() -> None:
    """Compile (or load from numba's cache) on a tiny input, so timings exclude JIT compilation."""
    if not _NUMBA:
        return
    _check_constants()
    from types import SimpleNamespace

    now = 100_000.0
    tiny = SimpleNamespace(
        m=np.array([0, 0, 1, 0, 1], np.int64), s=np.array([STATE, TOTAL, STATE, REJECT, TOTAL], np.int8),
        t=np.array([now - 5000.0, now - 4000.0, now - 3000.0, now - 100.0, now - 50.0]),
        v=np.array([0.0, 5.0, 1.0, 1.0, 3.0]), q=np.zeros(5, np.int8))
    numba_kpis(tiny, n_machines=2, cycle_times=np.ones(2), now=now, origin=now - 90_000.0)
    numba_history_kpis(tiny, n_machines=2, cycle_times=np.ones(2), now=now, origin=now - 90_000.0)
