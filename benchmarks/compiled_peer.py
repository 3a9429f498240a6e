"""A compiled per-sample peer for benchmarks/engine.py: the rolling-window KPIs in one numba loop.

This is evidence for a design decision, not part of the engine. The engine is vectorized NumPy array work
with no per-sample Python loop; this peer measures what a compiled kernel does on exactly the same data, so
that the engine's samples/s can be compared with the ceiling of a single-core, single-pass implementation.

The kernel walks the batch once in arrival order (the batch is in time order across machines) and keeps
only small per-machine / per-series state: the class in force and since when, the start of an open
unplanned run, the last value of each counter. Nothing is sorted. Its results mean exactly what
`engine.pandas_kpis` computes (A / P / Q / OEE of the rolling windows [now - L, now)).

Two choices make one pass cheap and are exact rather than approximations:
- Consecutive state samples of the same class are one segment. Splitting a segment does not change any
  overlap sum: all times lie in one binade of float64 (epoch seconds), so every difference, clip and break
  overlap is an exact multiple of the same ulp and their sums are exact. An unplanned run is therefore
  one interval, and deciding micro vs unplanned when it closes needs only its start, not pending sums.
- The rolling windows share their end (`now`) and are nested, so time and counts are accumulated per
  region between consecutive window starts, and a window is the sum of the regions inside it. A counter
  increment costs one add instead of one per window. (Exact for whole-number counters, as in the benchmark;
  fractional counter values are summed in another order than pandas, a difference in the last bits.)

numba is optional: `available()` says whether it can be used; importing this module never needs it.
"""

from __future__ import annotations

from typing import Any

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
        if ti < last_t:
            return 1
        last_t = ti
        mi = m[i]
        if mi < 0 or mi >= n_m:
            return 3
        si = s[i]
        vi = v[i]
        if si == STATE:
            if ti < origin:
                return 2
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
    running, micro = secs[:, RUNNING], secs[:, MICRO_STOP]
    ppt = running + secs[:, PLANNED_STOP] + secs[:, UNPLANNED_STOP] + micro + secs[:, UNKNOWN]
    run = running + micro
    total, reject = counts[:, 0], counts[:, 1]
    ideal = total * np.asarray(cycle_times, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        a_ = np.where(ppt > 0, run / ppt, np.nan)
        p_ = np.where(run > 0, ideal / run, np.nan)
        q_ = np.where(total > 0, (total - reject) / total, np.nan)
        oee = np.where(ppt > 0, np.where(total > 0, ideal / ppt * np.nan_to_num(q_), 0.0), np.nan)
    return {"A": a_, "P": p_, "Q": q_, "OEE": oee}


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
