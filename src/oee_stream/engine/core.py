"""The vectorized OEE engine: samples in, KPIs per machine and window out. Pure: no I/O, no clock.

Data layout (docs/engine.md):
- a sample log (append-only columnar arrays) of every accepted sample, read back only when a machine has
  to be re-derived (a sample older than what was already derived for it) or when old data is pruned;
- two derived tables kept *incrementally*, each an arena of per-machine segments (`_Arena`): the state
  table (one row per change of time class or reason, with cumulative production seconds per class and
  stop counts before the row) and the counter table (one segment per machine and counter, cumulative
  increments and ideal seconds). A tick appends the rows of the new samples to the segments of the
  machines that received them; nothing else is touched;
- the calendar is not merged into the state rows: per calendar, cumulative production / break /
  unscheduled seconds over its boundaries (`_CalendarCache`) turn a row's duration into production seconds;
- the open end of every machine (its last state row, the still undecided micro/unplanned status of an
  open stop, stale / offline / no-count tails, `now`) is a small per-machine tail computed at each `now`.

A window [a, b) of machine m is then two `searchsorted` look-ups per table plus the tail: C(b) - C(a).
Nothing loops per sample or per machine; the few Python loops run per calendar, per tail column (4) or per
result record when results are formatted.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from oee_stream.bus import Sample
from oee_stream.config import CALENDAR_WINDOWS, Plant
from oee_stream.engine import formulas as fx
from oee_stream.engine.calendar import (
    CAL_EXCLUDED,
    CAL_PRODUCTION,
    calendar_boundaries,
    local_floor,
    local_next,
    shift_instances,
)
from oee_stream.engine.plant import (
    GAP,
    GOOD,
    GOOD_COUNT,
    INPUT,
    MICRO_STOP,
    N_CLASSES,
    N_SIGNALS,
    PLANNED_EXCLUDED,
    PLANNED_STOP,
    PRODUCT,
    QUALITY_CODES,
    R_BAD,
    R_BREAK,
    R_NO_COUNT,
    R_NO_DATA,
    R_NONE,
    R_OFFLINE,
    R_STALE,
    R_STOPPED,
    R_UNMAPPED,
    R_UNSCHEDULED,
    REJECT,
    RUN,
    RUNNING,
    SIGNAL_CODES,
    STARTUP_REJECT,
    STATE,
    TOTAL,
    UNKNOWN,
    UNPLANNED_STOP,
    UNSCHEDULED,
    CompiledPlant,
    compile_plant,
)
from oee_stream.engine.result import SIX_BIG_LOSSES, TIME_CLASSES, KpiResult

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]
B = npt.NDArray[np.bool_]

DAY = 86400.0
RESUME = -1.0  # value of a GAP row that ends a gap (see Engine.connector_status)
SPEED_WINDOW_S = 300.0

# Counter series per machine in the counter table, in signal-code order so a batch sorted by
# (machine, signal, time) is already sorted by (series, time).
N_CTR = 5
C_TOTAL, C_REJECT, C_INPUT, C_GOOD, C_STARTUP = range(N_CTR)
_SIG_CTR = np.full(N_SIGNALS, -1, np.int64)
_SIG_CTR[[TOTAL, REJECT, INPUT, GOOD_COUNT, STARTUP_REJECT]] = [C_TOTAL, C_REJECT, C_INPUT, C_GOOD, C_STARTUP]
_IS_COUNTER = _SIG_CTR >= 0
_COUNTER_SIGNALS = np.flatnonzero(_IS_COUNTER)
_STATE_SIGNALS = np.array([STATE, RUN, GAP])

# Columns of an instant's values (Engine._point): the feature columns before the window column (the start-up
# rejects' ideal seconds in fx.IDEAL_STARTUP, not yet clamped), then the good counter and its ideal seconds,
# then the start-up reject count.
P_GOOD, P_IDEAL_GOOD, P_STARTUP = fx.WINDOW, fx.WINDOW + 1, fx.WINDOW + 2
# The counter values of an instant: its columns, and where each comes from in a machine's (counter, [count,
# ideal seconds]) values; one gather and one scatter instead of a strided copy per column.
_POINT_CTR_COLS = np.array([fx.TOTAL, fx.REJECT, fx.INPUT, fx.IDEAL_TOTAL, fx.IDEAL_REJECT, P_GOOD, P_IDEAL_GOOD,
                            P_STARTUP, fx.IDEAL_STARTUP])
_POINT_CTR_VALS = np.array([2 * C_TOTAL, 2 * C_REJECT, 2 * C_INPUT, 2 * C_TOTAL + 1, 2 * C_REJECT + 1, 2 * C_GOOD,
                            2 * C_GOOD + 1, 2 * C_STARTUP, 2 * C_STARTUP + 1])
N_POINT = fx.WINDOW + 3

# Tail columns per machine: the last state row, three transient rows (offline, no count, stale), `now`.
N_TAIL = 4
# A row of a (machines, N_TAIL) presence array with only its first column set, read as one integer.
_ONLY_FIRST = int(np.array([True] + [False] * (N_TAIL - 1)).view(np.uint32)[0])

# Reasons a sample is refused; index 0 means accepted.
REJECT_REASONS = ("", "unknown machine", "unknown signal", "future timestamp beyond max_clock_skew_s",
                  "value is not a finite number", "negative counter value", "state code is not an integer",
                  "unknown product", "counter value exceeds its configured width (counter_width)")


@dataclass
class IngestReport:
    accepted: int = 0
    late_dropped: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index in batch, reason)
    late: list[tuple[int, float]] = field(default_factory=list)  # (index in batch, lag seconds)


@dataclass
class EngineStats:
    accepted: int = 0
    duplicates: int = 0
    late_dropped: int = 0
    rejected: int = 0
    rederived_machines: int = 0  # machines re-derived from their log because a sample came out of order
    full_rebuilds: int = 0  # whole-engine rebuilds (`now` going backwards)
    prunes: int = 0  # data older than the retention horizon forgotten (once a day)
    counter_resets: dict[str, int] = field(default_factory=dict)
    counter_rollovers: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class WindowSet:
    """Windows to evaluate, one row each: machine, kind name index, [start, end)."""

    machine: I64
    kind: I64
    start: F64
    end: F64
    kinds: tuple[str, ...]
    shift: tuple[str | None, ...] = ()
    # Optional: both ends as indices into `points`, instants shared by every machine (("now",),
    # ("roll", seconds) = now - seconds, ("at", t)). Such ends are looked up once per machine through
    # cursors that move forward with `now` instead of one binary search per window.
    points: tuple[tuple[Any, ...], ...] = ()
    a_pt: I64 | None = None
    b_pt: I64 | None = None
    blocks: tuple[tuple[int, int, int, int], ...] = ()  # (first row, end row, a point, b point)


@dataclass(frozen=True)
class Timeline:
    """The open end of every machine at one `now` (the derived tables live in the engine).

    Tail columns j = 0..3: the machine's last state row, then the transient rows (connector offline, no
    count for no_count_stop_after_s, stale signal) in time order; absent rows sit at `now` with no length.
    Classes are final (an open stop is micro or unplanned as measured up to `now`).
    """

    now: float
    origin: float
    tt: F64  # (M, N_TAIL + 1) start times; column N_TAIL is now
    tc: I8  # (M, N_TAIL) final class
    tr: I64  # (M, N_TAIL) reason
    tp: F64  # (M, N_TAIL + 1) production seconds since origin at tt
    last_pos: I64  # (M,) arena position of the last state row
    fix: B  # (M,) the open stop is micro: its committed rows [run_t, tt[:, 0]) move unplanned -> micro
    run_t: F64
    run_p: F64  # production seconds at run_t
    fix_p_end: F64  # production seconds at tt[:, 0]
    tail_stops: F64  # (M, N_TAIL) start times of counted stops that begin in the tail, inf where none
    has_tail_stop: B
    tail_id: int  # counts timelines; consecutive ids let fixed instants reuse values (Engine._point)
    tail_changed: B  # machines whose open end differs from the previous timeline's
    ttT: F64  # tt, tp, tc transposed (contiguous per tail column)
    tpT: F64
    tcT: I64
    cur_cls: I64
    cur_reason: I64
    cur_since: F64
    cur_product: I64
    resets: I64
    rollovers: I64
    derive_reject: B  # the machine reports good and total but no reject: reject = total - good
    derive_total: B  # it reports good and reject but no total: total = good + reject


_VOID: dict[int, np.dtype[Any]] = {}


def _rows(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A C-contiguous 2-D array as a 1-D array of its rows (one void item each), a view: NumPy gathers and
    scatters whole rows by index several times faster that way than through 2-D fancy indexing."""
    if a.ndim == 1:
        return a
    width = a.dtype.itemsize * a.shape[1]
    vd = _VOID.get(width)
    if vd is None:
        vd = _VOID[width] = np.dtype((np.void, width))
    return a.view(vd)[:, 0]


def _take_rows(a: npt.NDArray[Any], idx: I64) -> npt.NDArray[Any]:
    """a[idx] for a 1-D or C-contiguous 2-D array."""
    if a.ndim == 1:
        return a[idx]
    out: npt.NDArray[Any] = _rows(a)[idx].view(a.dtype).reshape(len(idx), a.shape[1])
    return out


def _put_rows(a: npt.NDArray[Any], idx: I64, vals: npt.NDArray[Any]) -> None:
    """a[idx] = vals for a 1-D or C-contiguous 2-D array (vals: one row per index)."""
    if a.ndim == 1:
        a[idx] = vals
    elif vals.ndim == 2 and vals.dtype == a.dtype and vals.flags.c_contiguous:
        _rows(a)[idx] = _rows(vals)
    else:
        _rows(a)[idx] = _rows(np.ascontiguousarray(np.broadcast_to(vals, (len(idx), a.shape[1])), dtype=a.dtype))


def _shift1(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """x moved down by one row (row 0 takes the last row, like np.roll(x, 1), without its overhead)."""
    out = np.empty_like(x)
    if len(x):
        out[1:] = x[:-1]
        out[0] = x[-1]
    return out


def _any_rows(b: B) -> B:
    """b.any(axis=1) for a 2-D boolean array; rows of 4 or 8 are read as one integer each (NumPy's
    reduction along a short axis is slow)."""
    w = b.shape[1]
    if w in (4, 8) and b.flags.c_contiguous:
        out: B = b.view(np.uint32 if w == 4 else np.uint64).reshape(b.shape[0]) != 0
        return out
    anyr: B = np.asarray(b.any(axis=1))
    return anyr


def _ranges(starts: I64, counts: I64) -> I64:
    """Concatenated aranges [starts[i], starts[i] + counts[i]) without a Python loop."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offs = np.cumsum(counts) - counts
    out: I64 = np.repeat(starts.astype(np.int64) - offs, counts)
    out += np.arange(total, dtype=np.int64)
    return out


# Rows per step when the log or an arena is rewritten: index arrays and gathered copies stay this small
# instead of the size of a table of hundreds of millions of rows.
REWRITE_CHUNK = 1 << 20


def _chunks(counts: I64) -> list[tuple[int, int]]:
    """Consecutive index ranges [a, b) over `counts` holding about REWRITE_CHUNK in all (one larger item
    alone)."""
    limit = REWRITE_CHUNK
    n = len(counts)
    total = int(counts.sum()) if n else 0
    if total <= limit:
        return [(0, n)]
    cum = np.cumsum(counts)
    cuts = np.searchsorted(cum, np.arange(limit, total, limit), side="right")
    edges = np.unique(np.concatenate([[0], cuts, [n]]))
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def _group_starts(g: I64) -> tuple[I64, I64, I64]:
    """For a sorted group id array: (unique ids, index of each group's first element, group sizes)."""
    n = len(g)
    if n == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    first = np.ones(n, np.bool_)
    first[1:] = g[1:] != g[:-1]
    idx = np.flatnonzero(first)
    cnt = np.diff(np.append(idx, n))
    return g[idx], idx, cnt


def _seg_cumsum(vals: F64, first: B, init: F64) -> F64:
    """Inclusive cumulative sum down axis 0 that restarts at `init[k]` where segment k begins (`first`,
    which is set at row 0).

    Each finished segment's total (and start value) is subtracted at the next segment's start instead of
    subtracting a global running sum afterwards, so values stay the size of one machine's and keep their
    precision (a global cumsum over 10 000 machines would lose ~1e-7 s).
    """
    if len(vals) == 0:
        return vals.copy()
    starts = np.flatnonzero(first)
    if len(starts) == len(vals):  # every row its own segment (a tick over many machines)
        each: F64 = vals + init
        return each
    adj = init.copy()
    if len(starts) > 1:
        tot = np.add.reduceat(vals, starts, axis=0)
        adj[1:] -= tot[:-1] + init[:-1]
    v = vals.copy()
    _put_rows(v, starts, _take_rows(v, starts) + adj)
    out: F64 = np.cumsum(v, axis=0)
    return out


def _grown(arr: npt.NDArray[Any], n: int, keep: int) -> npt.NDArray[Any]:
    """`arr` with n rows, its first `keep` rows copied and the new ones zero.

    The copy goes into fresh memory from calloc, which the kernel maps on first write: rows not used yet
    cost no resident memory (realloc would zero them, and so map them, at once).
    """
    out = np.zeros((n, *arr.shape[1:]), arr.dtype)
    out[:keep] = arr[:keep]
    return out


class _Arena:
    """Growable per-segment row storage, one set of arrays, globally sorted by `key`.

    Segment s owns [start[s], start[s] + cap[s]); its rows are sorted by time. key = rank[s] * span +
    (t - origin) and unused slots hold rank[s] * span + span - 0.5, so the whole key array is sorted and
    one `np.searchsorted` finds a time inside any segment. A segment that outgrows its capacity moves to
    the end with twice the room and a new, larger rank (amortized O(1) per row); the hole it leaves keeps
    its old keys, so the order holds. When holes outweigh live room the arena is compacted.
    """

    def __init__(self, n_seg: int, span: float, origin: float, cols: dict[str, tuple[Any, int]],
                 init_cap: int = 8) -> None:
        self.n = n_seg
        self.span = span
        self.origin = origin
        self.pad = span - 0.5
        self._cols_spec = cols
        self.start = np.arange(n_seg, dtype=np.int64) * init_cap
        self.cap = np.full(n_seg, init_cap, np.int64)
        self.len = np.zeros(n_seg, np.int64)
        self.rank = np.arange(n_seg, dtype=np.int64)
        self.next_rank = n_seg
        self.size = n_seg * init_cap
        alloc = max(self.size, 1024)
        self.key = np.empty(alloc)
        self.t = np.empty(alloc)
        self.cols: dict[str, Any] = {name: np.zeros((alloc, w) if w > 1 else alloc, dt)
                                     for name, (dt, w) in cols.items()}
        self.key[: self.size] = np.repeat(self.rank, init_cap) * span + self.pad

    def _grow(self, need: int) -> None:
        alloc = len(self.key)
        if need <= alloc:
            return
        new = max(need, alloc * 2)
        # One array at a time, the old one freed before the next is copied: the transient is one array,
        # not a second arena.
        self.key = _grown(self.__dict__.pop("key"), new, self.size)
        self.t = _grown(self.__dict__.pop("t"), new, self.size)
        for name in list(self.cols):
            self.cols[name] = _grown(self.cols.pop(name), new, self.size)

    def _rekey(self, seg: I64, cap: I64, start0: int, live: I64) -> None:
        """Keys of segments `seg` laid out one after the other from `start0` with room `cap`; `live`: the
        positions of their rows. The whole run gets pad keys by one contiguous write, then the live rows
        their time keys."""
        base = np.repeat(self.rank[seg] * self.span, cap)
        self.key[start0:start0 + len(base)] = base + self.pad
        self.key[live] = base[live - start0] + (self.t[live] - self.origin)

    def compact(self, extra: I64 | None = None, drop: I64 | None = None, origin: float | None = None) -> None:
        """Lay every segment out again in segment order with room for `extra` more rows; `drop` rows are
        removed from the front of each segment and keys are made relative to a new `origin` (pruning)."""
        if drop is not None:
            first = self.start + drop
            self.len = self.len - drop
        else:
            first = self.start
        if origin is not None:
            self.origin = origin
        need = self.len + (extra if extra is not None else 0)
        cap = np.maximum(need + need // 2, 8)
        start = np.cumsum(cap) - cap
        size = int(cap.sum())
        alloc = max(size, 1024)
        parts = _chunks(self.len)

        def moved(arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
            out = np.zeros((alloc, *arr.shape[1:]), arr.dtype)
            for a, b in parts:
                _rows(out)[_ranges(start[a:b], self.len[a:b])] = _rows(arr)[_ranges(first[a:b], self.len[a:b])]
            return out

        # One array at a time, each old one freed once copied, a chunk of segments at a time: the transient
        # is one column, not a second arena (a prune compacts arenas of hundreds of MiB).
        del self.key
        self.t = moved(self.__dict__.pop("t"))
        for name in list(self.cols):
            self.cols[name] = moved(self.cols.pop(name))
        self.key = np.empty(alloc)
        self.start, self.cap, self.size = start, cap, size
        self.rank = np.arange(self.n, dtype=np.int64)
        self.next_rank = self.n
        for a, b in parts:
            self._rekey(np.arange(a, b, dtype=np.int64), cap[a:b], int(start[a]) if b > a else 0,
                        _ranges(start[a:b], self.len[a:b]))

    def reserve(self, seg: I64, extra: I64) -> None:
        """Room for `extra` more rows in each (unique) segment of `seg`."""
        need = self.len[seg] + extra
        grow = need > self.cap[seg]
        if not grow.any():
            return
        g = seg[grow]
        # Room for as many rows again, and at least 3x (up to 256 rows) for small segments: fewer moves
        # while a machine's segment fills up tick by tick, little spare room for big bulk loads.
        ng = need[grow]
        newcap = ng + np.maximum(ng, np.minimum(3 * ng, 256))
        total_new = int(newcap.sum())
        live = int(self.cap.sum())
        if self.size + total_new > 2 * (live + total_new) + (1 << 16) or self.next_rank + len(g) > 8 * self.n + 4096:
            full = np.zeros(self.n, np.int64)
            full[seg] = extra
            self.compact(full)
            return
        self._grow(self.size + total_new)
        new_start = self.size + np.cumsum(newcap) - newcap
        n_live = self.len[g]
        src = _ranges(self.start[g], n_live)
        dst = _ranges(new_start, n_live)
        self.t[dst] = self.t[src]
        for arr in self.cols.values():
            rows = _rows(arr)
            rows[dst] = rows[src]
        self.rank[g] = self.next_rank + np.arange(len(g), dtype=np.int64)
        self.next_rank += len(g)
        self.start[g] = new_start
        self.cap[g] = newcap
        self.size += total_new
        self._rekey(g, newcap, int(new_start[0]), dst)

    def truncate(self, seg: I64, new_len: I64) -> None:
        drop = self.len[seg] - new_len
        idx = _ranges(self.start[seg] + new_len, drop)
        self.key[idx] = np.repeat(self.rank[seg] * self.span, drop) + self.pad
        self.len[seg] = new_len

    def append(self, seg: I64, t: F64, **vals: Any) -> I64:
        """Append rows (sorted by segment, then time) at the end of their segments; returns positions."""
        u, first, cnt = _group_starts(seg)
        if len(u) == 0:
            return np.zeros(0, np.int64)
        self.reserve(u, cnt)
        pos = np.repeat(self.start[u] + self.len[u] - first, cnt) + np.arange(len(seg), dtype=np.int64)
        self.t[pos] = t
        self.key[pos] = np.repeat(self.rank[u] * self.span, cnt) + (t - self.origin)
        for name, v in vals.items():
            _put_rows(self.cols[name], pos, v)
        self.len[u] += cnt
        return pos

    def search(self, seg: I64, x: F64, side: Literal["left", "right"]) -> I64:
        needle = self.rank[seg] * self.span + (x - self.origin)
        # Binary searches with sorted needles walk the table in order: several times faster than random.
        order = np.argsort(needle, kind="stable")
        out = np.empty(len(needle), np.int64)
        out[order] = np.searchsorted(self.key[: self.size], needle[order], side=side)
        return out

    def last(self, seg: I64) -> I64:
        return self.start[seg] + self.len[seg] - 1


@dataclass
class _Cursor:
    x: float
    s_idx: I64  # per machine: index in its segment of the last state row at or before x
    s_rows: F64  # Engine._row_data of those rows
    c_idx: I64  # per counter series: rows before x
    c_vals: F64  # (series, 2) cumulative values before x
    s_dirty: B
    c_dirty: B
    # Time of the next row after the cursor (inf at a segment's end): a tick finds the cursors that move by
    # one comparison instead of gathering every segment's next row. Valid while the epoch is unchanged; new
    # rows can only change it where it was inf (at the end), cut rows mark the segment dirty.
    s_next: F64 | None = None
    c_next: F64 | None = None
    vals: F64 | None = None  # the point's values at the last tick (fixed instants only)
    epoch: int = -1  # Engine._epoch when the cursor last moved
    tail_id: int = -1  # the Timeline they were computed with


class _CalendarCache:
    """Cumulative production / break / unscheduled seconds since `origin` over a calendar's boundaries.

    Recomputed only when a time beyond the cached range is asked for; extending the range gives the same
    values for the earlier part, so rows derived earlier stay consistent.
    """

    def __init__(self, cal: Any, origin: float, until: float) -> None:
        self.cal = cal
        self.origin = origin
        self._build(until)

    def _build(self, until: float) -> None:
        # From a few days before the origin: rows kept across a prune (an open stop, the row in force at the
        # origin) may start before it; values are relative to the origin (negative before it).
        bt, bc = calendar_boundaries(self.cal, self.origin - 3 * DAY, until)
        self.until = until
        self.bt = bt
        self.bc = bc
        dur = np.diff(np.append(bt, until))
        cum = np.zeros((3, len(bt)))
        for k in range(3):  # CAL_UNSCHEDULED, CAL_EXCLUDED, CAL_PRODUCTION
            cum[k, 1:] = np.cumsum(np.where(bc == k, dur, 0.0))[:-1]
        self.cum = cum
        at_origin = np.array([self.seconds(np.array([self.origin]), k)[0] for k in range(3)])
        self.cum = cum - at_origin[:, None]

    def ensure(self, until: float) -> None:
        if until > self.until:
            self._build(until + 2 * DAY)

    def rebase(self, origin: float) -> None:
        """Values relative to a later origin (a prune): the same boundaries, each cumulative sum shifted by
        its value at the new origin (sums of whole seconds, so exactly what a rebuild gives)."""
        at_origin = np.array([self.seconds(np.array([origin]), k)[0] for k in range(3)])
        self.cum = self.cum - at_origin[:, None]
        self.origin = origin

    def index(self, x: F64) -> I64:
        out: I64 = np.maximum(np.searchsorted(self.bt, x, side="right") - 1, 0)
        return out

    def seconds(self, x: F64, k: int) -> F64:
        """Seconds of calendar class k in [origin, x)."""
        i = self.index(x)
        out: F64 = self.cum[k, i] + np.where(self.bc[i] == k, x - self.bt[i], 0.0)
        return out


LOG_INITIAL = 1024  # entries; tests make it small so that the log compacts often


class _Log:
    """Every accepted, deduplicated sample, append-only, in arrival order (read back to re-derive).

    `rep` marks entries that repeat their series' previous value and are not the series' newest (see
    `Engine._log_batch`); once no late sample can land before them any more, the engine drops them when
    the log would otherwise grow."""

    def __init__(self) -> None:
        self.n = 0
        self.m = np.empty(LOG_INITIAL, np.int64)
        self.s = np.empty(LOG_INITIAL, np.int8)
        self.t = np.empty(LOG_INITIAL)
        self.v = np.empty(LOG_INITIAL)
        self.q = np.empty(LOG_INITIAL, np.int8)
        self.rep = np.zeros(LOG_INITIAL, np.bool_)

    def full(self, k: int) -> bool:
        return self.n + k > len(self.t)

    def append(self, m: I64, s: I8, t: F64, v: F64, q: I8) -> int:
        """Append; returns where the new entries start."""
        k = len(t)
        if self.full(k):
            new = max(2 * len(self.t), self.n + k)
            for name in ("m", "s", "t", "v", "q", "rep"):
                arr = getattr(self, name)
                out = np.zeros(new, arr.dtype) if name == "rep" else np.empty(new, arr.dtype)
                out[: self.n] = arr[: self.n]
                setattr(self, name, out)
        start = self.n
        sl = slice(start, start + k)
        self.m[sl], self.s[sl], self.t[sl], self.v[sl], self.q[sl] = m, s, t, v, q
        self.rep[sl] = False
        self.n += k
        return start

    def drop(self, gone: B, pos: I64) -> I64:
        """Remove the entries `gone` (a mask over the first n), in place and a chunk at a time; returns the new
        positions of the entries at `pos` (-1: removed). Entries only move to lower positions, so each chunk is
        written below what is still to be read."""
        out = np.full(len(pos), -1, np.int64)
        order = np.argsort(pos, kind="stable")
        spos = pos[order]
        cols = [getattr(self, name) for name in ("m", "s", "t", "v", "q", "rep")]
        w = 0
        for a in range(0, self.n, REWRITE_CHUNK):
            b = min(a + REWRITE_CHUNK, self.n)
            live = ~gone[a:b]
            lo, hi = np.searchsorted(spos, [a, b])
            if hi > lo:
                at = spos[lo:hi] - a
                kept = live[at]
                out[order[lo:hi][kept]] = w + np.cumsum(live)[at[kept]] - 1
            k = int(live.sum())
            for arr in cols:
                arr[w:w + k] = arr[a:b][live]
            w += k
        self.n = w
        return out

    def view(self) -> tuple[I64, I8, F64, F64, I8]:
        n = self.n
        return self.m[:n], self.s[:n], self.t[:n], self.v[:n], self.q[:n]

    def replace(self, m: I64, s: I8, t: F64, v: F64, q: I8) -> None:
        self.n = 0
        self.append(m, s, t, v, q)


Cols = tuple[I64, I8, F64, F64, I8]


def _sort_mst(m: I64, s: I8, t: F64, v: F64, q: I8, span: float, origin: float) -> Cols:
    """Stable order by (machine, signal, time).

    Batches from the bus are in time order per series, so a stable radix sort on the small integer key
    (machine, signal) is enough; only when time then still decreases inside a series is a full sort done.
    The key numbers only the signals present in the batch (usually 2-3), so that up to 65 536 series it
    fits 16 bits and NumPy sorts it in one radix pass; machine and signal are decoded from the sorted key
    instead of being gathered, and a batch of one quality gathers no quality column.
    """
    n = len(t)
    if n == 0:
        return m, s, t, v, q
    present = np.bincount(s.view(np.uint8), minlength=N_SIGNALS)[:N_SIGNALS] > 0
    n_sig = int(present.sum())
    lut = (np.cumsum(present) - 1).astype(np.int64)
    sig_of = np.flatnonzero(present).astype(np.int8)
    g = m * n_sig + lut[s] if n_sig > 1 else m
    if n > 1 and not bool((g[1:] >= g[:-1]).all()):
        gmax = int(g.max())
        if gmax < 1 << 16:
            order = np.argsort(g.astype(np.uint16), kind="stable")  # one radix pass
        elif gmax < 1 << 32:
            # two stable radix passes on 16-bit halves (NumPy radix-sorts only types of 16 bits or less)
            o1 = np.argsort((g & 0xFFFF).astype(np.uint16), kind="stable")
            order = o1[np.argsort((g[o1] >> 16).astype(np.uint16), kind="stable")]
        else:
            order = np.argsort(g, kind="stable")
        g = g[order]
        t, v = t[order], v[order]
        q0 = q[0]
        q = np.full(n, q0, np.int8) if bool((q == q0).all()) else q[order]
        if n_sig > 1:
            m = g // n_sig
            s = sig_of[g - m * n_sig]
        else:
            m = g
            s = np.full(n, sig_of[0], np.int8)
    if n > 1:
        same = g[1:] == g[:-1]
        if (same & (t[1:] < t[:-1])).any():
            key = g.astype(np.float64) * span + (t - origin)
            order = np.argsort(key, kind="stable")
            m, s, t, v, q = m[order], s[order], t[order], v[order], q[order]
    return m, s, t, v, q


def _dup_mask(m: I64, s: I8, t: F64, v: F64, q: I8) -> B:
    """Rows (sorted by machine, signal, time) that repeat an earlier row exactly: same machine, signal,
    source time, value and quality. The first of them stays."""
    same = np.zeros(len(t), np.bool_)
    if len(t) < 2:
        return same
    tie = (t[1:] == t[:-1]) & (m[1:] == m[:-1]) & (s[1:] == s[:-1])
    same[1:] = tie & ((v[1:] == v[:-1]) | (np.isnan(v[1:]) & np.isnan(v[:-1]))) & (q[1:] == q[:-1])
    # A series with several values at one source time (coarse PLC timestamps) can repeat a row that is
    # not the one just before it: 10, 12, then 10 redelivered. Only runs of 3+ rows at one time can
    # hide such a repeat, so only they are sorted by value.
    if len(tie) > 1 and (tie[1:] & tie[:-1]).any():
        start = np.ones(len(t), np.bool_)
        start[1:] = ~tie
        run = np.cumsum(start) - 1
        size = np.bincount(run)
        rows = np.flatnonzero(size[run] >= 3)
        rv = np.where(np.isnan(v[rows]), np.inf, v[rows])
        nan = np.isnan(v[rows])
        order = rows[np.lexsort((rows, q[rows], nan, rv, run[rows]))]
        o_v, o_nan = np.where(np.isnan(v[order]), np.inf, v[order]), np.isnan(v[order])
        rep = ((run[order][1:] == run[order][:-1]) & (o_v[1:] == o_v[:-1]) & (o_nan[1:] == o_nan[:-1])
               & (q[order][1:] == q[order][:-1]))
        same[order[1:][rep]] = True
    return same


class Engine:
    """OEE for every machine of a plant, vectorized across machines, derived incrementally."""

    def __init__(self, plant: Plant, *, origin: float | None = None, retention_s: float | None = None,
                 prune_every_s: float = DAY) -> None:
        self.cp: CompiledPlant = compile_plant(plant)
        self.plant = plant
        self.policies = plant.policies
        max_window = max([w.seconds for w in plant.rolling_windows] + [DAY + 3600.0])
        # How far back any window reaches (a rolling window, or a local day still open to late data); the
        # engine keeps a day more, so that it prunes once a day.
        self.reach_s = max_window + self.policies.allowed_lateness_s
        self.retention_s = retention_s or (self.reach_s + DAY)
        self._prune_every_s = prune_every_s
        # Fixed key span: the longest time between the origin and a sample before the next prune.
        self._span = float(2 ** math.ceil(math.log2(self.retention_s + 4 * DAY + self.policies.max_clock_skew_s)))
        self.origin: float | None = origin
        self.watermark = np.full(self.cp.n, -np.inf)
        self.offline_since = np.full(self.cp.n, np.nan)
        self._sessions: dict[str, str] = {}
        self.stats = EngineStats()
        mods = self.cp.counter_modulus[self.cp.counter_modulus > 0]
        self._min_modulus = float(mods.min()) if len(mods) else math.inf
        self._pending: list[Cols] = []
        self._multi_product = np.array([len(p) > 1 for p in self.cp.product_names], np.bool_)
        self._any_multi = bool(self._multi_product.any())
        self._any_product = self._any_multi  # product samples matter only where a machine has several
        self._any_counts = bool(self.cp.uses_counts.any())
        self._state_mapped = np.ascontiguousarray(self.cp.state_mapped).ravel()
        self._state_class = np.ascontiguousarray(self.cp.state_class).ravel()
        self._state_reason = np.ascontiguousarray(self.cp.state_reason).ravel().astype(np.int64)
        self._timeline: Timeline | None = None
        self._win_cache: dict[tuple[int, str], tuple[float, float, list[tuple[int, float, float, str | None]]]] = {}
        self._cursors: dict[tuple[Any, ...], _Cursor] = {}
        e_i = np.zeros(0, np.int64)
        e_f = np.zeros(0, np.float64)
        self._ovr: tuple[I64, F64, F64, I64] = (e_i, e_f, e_f, e_i)  # operator reasons: machine, start, end, reason
        self._ovr_names: tuple[str, ...] = self.cp.reasons
        self._reset_derived()

    # ------------------------------------------------------------------ state

    def _reset_derived(self) -> None:
        n = self.cp.n
        self._log = _Log()
        # Where each series' last sample sits in the log and whether it repeats the one before (then it can
        # be dropped from the log once a newer sample follows it); -1: unknown (log rewritten, re-derived).
        self._log_pos = np.full(n * N_SIGNALS, -1, np.int64)
        self._log_rep = np.zeros(n * N_SIGNALS, np.bool_)
        self._last_gap_t = np.full(n, -np.inf)  # latest connector gap row derived per machine
        self._derived_now = -np.inf
        self._ready = False  # arenas exist (they need the origin)
        self.frontier = np.full(n, -np.inf)  # newest derived sample time per machine (any signal)
        self._ser_v = np.full(n * N_CTR, np.nan)  # last value of each counter series
        self._cend = np.zeros((n * N_CTR, 2))  # cumulative increments / ideal seconds at each series' end
        self._last_t = np.full((n, N_SIGNALS), np.nan)  # last derived sample per series, for duplicates
        self._last_v = np.full((n, N_SIGNALS), np.nan)
        self._last_q = np.full((n, N_SIGNALS), -1, np.int8)
        # the series has several derived rows at its last time: a repeat of one of them in a later batch
        # need not be the last row, so such samples go the exact way (re-derived with the log)
        self._tie_last = np.zeros((n, N_SIGNALS), np.bool_)
        self._real_cls = np.full(n, -1, np.int8)  # class / reason of the latest real state sample
        self._real_reason = np.zeros(n, np.int64)
        self._last_count = np.full(n, -np.inf)  # latest total increment (state_source: counts)
        self._cur_p = self.cp.default_product.copy()
        self._cur_pt = np.full(n, -np.inf)
        self._prev_p = self.cp.default_product.copy()
        self._run_pos = np.full(n, -1, np.int64)  # index in the segment of the open stop's first row
        self._run_t = np.full(n, np.nan)
        self._resets = np.zeros(n, np.int64)
        self._rolls = np.zeros(n, np.int64)
        self._seen = np.zeros((n, N_SIGNALS), np.bool_)
        self._cursors = {}
        self._prev_tail: tuple[Timeline, B, B] | None = None  # last timeline, open stops, present rows
        self._prev_len = np.zeros(n, np.int64)
        self._tail_dirty = np.ones(n, np.bool_)  # machines whose open end must be computed again
        self._epoch = 0  # counts changes of the derived tables
        self._tail_id = 0

    def _init_arenas(self, origin: float) -> None:
        n = self.cp.n
        self.origin = origin
        self._cals = [_CalendarCache(self.plant.calendars[c], origin, origin + self.retention_s + 3 * DAY)
                      for c in self.cp.calendar_names]
        self._sa = _Arena(n, self._span, origin, {"cls": (np.int8, 1), "reason": (np.int32, 1),
                                                  "scum": (np.float64, N_CLASSES), "stops": (np.float64, 1),
                                                  "flag": (np.int8, 1), "p": (np.float64, 1)})
        self._ca = _Arena(n * N_CTR, self._span, origin, {"cum": (np.float64, 2)})
        machines = np.arange(n, dtype=np.int64)
        self._sa.append(machines, np.full(n, origin), cls=np.full(n, UNKNOWN, np.int8),
                        reason=np.full(n, R_NO_DATA, np.int32), scum=np.zeros((n, N_CLASSES)),
                        stops=np.zeros(n), flag=np.zeros(n, np.int8), p=np.zeros(n))
        self._ready = True

    def memory_bytes(self) -> int:
        """Bytes held by the sample log and the derived tables (allocated, not just used)."""
        out = sum(getattr(self._log, k).nbytes for k in ("m", "s", "t", "v", "q"))
        if self._ready:
            for ar in (self._sa, self._ca):
                out += ar.key.nbytes + ar.t.nbytes + sum(c.nbytes for c in ar.cols.values())
        return int(out)

    # ------------------------------------------------------------------ calendar

    def _cal_eval(self, m: I64, x: F64, k: int) -> F64:
        """Seconds of calendar class k in [origin, x) for machine m's calendar."""
        if len(self._cals) == 1:
            return self._cals[0].seconds(x, k)
        out = np.empty(len(x))
        cal_of = self.cp.calendar_of[m]
        for ci, cal in enumerate(self._cals):
            sel = cal_of == ci
            if sel.any():
                out[sel] = cal.seconds(x[sel], k)
        return out

    def _prod(self, m: I64, x: F64) -> F64:
        return self._cal_eval(m, x, CAL_PRODUCTION)

    def _cal_state(self, m: I64, x: F64) -> tuple[I8, F64]:
        """Calendar class at x (a boundary at x counts as already passed) and since when it holds."""
        if len(self._cals) == 1:
            cal0 = self._cals[0]
            i0 = cal0.index(x)
            return cal0.bc[i0].astype(np.int8), cal0.bt[i0]
        cls = np.empty(len(x), np.int8)
        since = np.empty(len(x))
        cal_of = self.cp.calendar_of[m]
        for ci, cal in enumerate(self._cals):
            sel = cal_of == ci
            if sel.any():
                i = cal.index(x[sel])
                cls[sel] = cal.bc[i]
                since[sel] = cal.bt[i]
        return cls, since

    # ------------------------------------------------------------------ ingest

    def ingest(self, samples: Sequence[Sample], now: float) -> IngestReport:
        """Map bus samples to arrays (machine ids, product names) and ingest them."""
        m, s, t, v, q, pre_reject = self.sample_arrays(samples)
        report = self.ingest_arrays(m, s, t, v, q, now=now)
        if pre_reject:
            rejected = dict(report.rejected)
            rejected.update(pre_reject)
            report.rejected = sorted(rejected.items())
        return report

    def sample_arrays(self, samples: Sequence[Sample]) -> tuple[I64, I8, F64, F64, I8, dict[int, str]]:
        """The columns `ingest_arrays` takes (machine indices, signal codes, product indices), and the rows
        refused already here (an unknown product) with their reasons."""
        n = len(samples)
        m = np.full(n, -1, np.int64)
        s = np.full(n, -1, np.int8)
        t = np.empty(n, np.float64)
        v = np.empty(n, np.float64)
        q = np.empty(n, np.int8)
        pre_reject: dict[int, str] = {}
        index, sig_codes = self.cp.index, SIGNAL_CODES
        for i, smp in enumerate(samples):
            mi = index.get(smp.machine, -1)
            m[i] = mi
            s[i] = sig_codes.get(smp.signal, -1)
            t[i] = smp.ts
            q[i] = QUALITY_CODES[smp.quality]
            val = smp.value
            if s[i] == PRODUCT and mi >= 0 and smp.quality == "good":
                key = str(val)
                pidx = self.cp.product_lookup[mi].get(key)
                if pidx is None:
                    pre_reject[i] = (f"unknown product {key!r} for machine {smp.machine}; "
                                     f"allowed: {sorted(self.cp.product_names[mi])}")
                    v[i] = np.nan
                else:
                    v[i] = pidx
            elif val is None or isinstance(val, str):
                v[i] = np.nan if val is None else _to_float(val)
            else:
                v[i] = float(val)
        return m, s, t, v, q, pre_reject

    def _all_valid(self, m: I64, s: I8, t: F64, v: F64, q: I8, now: float) -> bool:
        """A sufficient test that every row of a batch is valid, from a few reductions instead of per-row
        masks: machines and signals in range, times finite and not in the future, all of good quality,
        values finite, non-negative and below every counter's modulus, state codes whole numbers. When it
        fails, `ingest_arrays` works out per row which rows are refused."""
        if not len(t):
            return True
        if int(m.min()) < 0 or int(m.max()) >= self.cp.n or int(s.min()) < 0 or int(s.max()) >= N_SIGNALS:
            return False
        if int(q.min()) != GOOD or int(q.max()) != GOOD:
            return False
        t_lo, t_hi, v_lo, v_hi = float(t.min()), float(t.max()), float(v.min()), float(v.max())  # NaN propagates
        if not (math.isfinite(t_lo) and math.isfinite(t_hi) and math.isfinite(v_lo) and math.isfinite(v_hi)):
            return False
        if t_hi > now + self.policies.max_clock_skew_s or v_lo < 0 or v_hi >= self._min_modulus:
            return False
        sv = v[s == STATE]
        return bool((sv == np.floor(sv)).all())

    def ingest_arrays(self, m: I64, s: I8, t: F64, v: F64, q: I8, *, now: float) -> IngestReport:
        """Validate and queue a columnar batch (derived at the next evaluation). Product values are indices."""
        n = len(t)
        ncp = self.cp.n
        all_ok = self._all_valid(m, s, t, v, q, now)
        if all_ok:
            ok = np.ones(n, np.bool_)
            mc = m
            reason = np.zeros(0, np.int8)
        else:
            mc = np.clip(m, 0, ncp - 1)
            good = q == GOOD
            counter = _IS_COUNTER[np.clip(s, 0, N_SIGNALS - 1)] & (s >= 0)
            modulus = self.cp.counter_modulus[mc]
            # One combined test; the reason codes are worked out only for the refused rows.
            with np.errstate(invalid="ignore"):
                bad_v = good & ~np.isfinite(v)
                ok = ((m >= 0) & (m < ncp) & (s >= 0) & (t <= now + self.policies.max_clock_skew_s)
                      & np.isfinite(t) & ~bad_v)
                gc = counter & good
                ok &= ~(gc & ((v < 0) | ((modulus > 0) & (v >= modulus))))
                ok &= ~((s == STATE) & good & (v != np.round(v)))
            reason = np.zeros(n, np.int8)
            if not ok.all():
                bad = np.flatnonzero(~ok)
                r = np.zeros(len(bad), np.int8)
                bm, bs, bt, bv = m[bad], s[bad], t[bad], v[bad]
                bg, bc, bmod = good[bad], counter[bad], modulus[bad]
                with np.errstate(invalid="ignore"):
                    conds = [((bm < 0) | (bm >= ncp), 1), (bs < 0, 2),
                             (bt > now + self.policies.max_clock_skew_s, 3),
                             (~np.isfinite(bt) | (bg & ~np.isfinite(bv)), 4), (bc & bg & (bv < 0), 5),
                             ((bs == STATE) & bg & (bv != np.round(bv)), 6),
                             (bc & bg & (bmod > 0) & (bv >= bmod), 8)]
                for cond, code in conds:
                    r[(r == 0) & cond] = code
                reason[bad] = r
            all_ok = bool(ok.all())
        if self.origin is None and ok.any():
            t_ok = t if all_ok else t[ok]
            self.origin = math.floor(float(t_ok.min()) / 3600.0) * 3600.0 - self.retention_s
        # Late: older than the machine's newest sample by more than allowed_lateness_s, or older than the
        # engine's memory. Lateness is measured against what was seen before this batch: a batch (a spool
        # being replayed, a recorded log) is in time order within itself.
        if all_ok:
            lag = self.watermark[m] - t
            late = lag > self.policies.allowed_lateness_s
        else:
            lag = np.zeros(n)
            lag[ok] = self.watermark[m[ok]] - t[ok]
            late = ok & (lag > self.policies.allowed_lateness_s)
        any_late = bool(late.any())
        if any_late:
            base = self._baselines(ok, late, mc, s, t, q == GOOD)
            late &= ~base
            any_late = bool(late.any())
            first_state = base & ((s == STATE) | (s == RUN))
            if first_state.any():
                # A machine's initial state reported late holds from when it is accepted: the machine's
                # newest sample time seen before this batch (the time lateness is measured against).
                t = np.where(first_state, self.watermark[mc], t)
        if self.origin is not None and n and (ok & (t < self.origin)).any():
            # Older than the engine's memory (an initial value with its original source time): it holds
            # from the origin on, like the anchors kept when old samples are pruned.
            t = np.where(ok & (t < self.origin), self.origin, t)
        if all_ok and not any_late:
            n_keep = n
        else:
            keep = ok & ~late
            n_keep = int(keep.sum())
        if n_keep:
            if n_keep == n:
                km, ks, kt, kv, kq = m, s, t, v, q
            else:
                km, ks, kt, kv, kq = m[keep], s[keep], t[keep], v[keep], q[keep]
            self._raise_watermark(km, kt)
            self._pending.append((km.astype(np.int64, copy=False), ks, kt, kv, kq))
            self._timeline = None
        rep = IngestReport(accepted=n_keep, late_dropped=int(late.sum()) if any_late else 0)
        if not all_ok:
            bad_idx = np.flatnonzero(~ok)
            rep.rejected = [(int(i), REJECT_REASONS[reason[i]]) for i in bad_idx]
        if rep.late_dropped:
            late_idx = np.flatnonzero(late)
            rep.late = [(int(i), float(lag[i])) for i in late_idx]
        self.stats.accepted += rep.accepted
        self.stats.late_dropped += rep.late_dropped
        self.stats.rejected += len(rep.rejected)
        return rep

    def _baselines(self, ok: B, late: B, m: I64, s: I8, t: F64, good: B) -> B:
        """Late samples that are the first ever of their series: a counter's baseline, a machine's initial
        state (state code or run bit).

        A counter's first sample only sets the value the next one is compared with; it counts nothing, so
        folding it in changes no window. Without it, a rarely changing counter -- typically rejects, whose
        value at connector start carries the source time of the last reject, hours ago -- would lose its
        first increment after a start-up, where totals (changing every cycle) lose nothing noticeable.
        Likewise a state signal's value at connector start carries the time of the last state change: it is
        the machine's current state, taken from when it is accepted (see `ingest_arrays`) instead of
        leaving the machine without a state until its next change.
        Only the newest such sample per series is kept, and none when the batch has a timely sample of
        the series (that one is the baseline)."""
        sc = np.clip(s, 0, N_SIGNALS - 1)
        first_kind = (_IS_COUNTER[sc] | (sc == STATE) | (sc == RUN)) & (s >= 0) & good
        cand = np.flatnonzero(late & first_kind)
        out = np.zeros(len(late), np.bool_)
        if not len(cand):
            return out
        cm, cs = m[cand], s[cand].astype(np.int64)
        timely = np.flatnonzero(ok & ~late & first_kind)
        new = ~self._series_known(cm, s[cand]) & ~np.isin(cm * N_SIGNALS + cs,
                                                           m[timely] * N_SIGNALS + s[timely].astype(np.int64))
        cand, cm, cs = cand[new], cm[new], cs[new]
        if not len(cand):
            return out
        order = np.lexsort((t[cand], cs, cm))
        cand, cm, cs = cand[order], cm[order], cs[order]
        last = np.ones(len(cand), np.bool_)
        last[:-1] = (cm[1:] != cm[:-1]) | (cs[1:] != cs[:-1])
        out[cand[last]] = True
        return out

    def _series_known(self, m: I64, s: I8) -> B:
        """Series (machine, signal) with a sample accepted before: derived (the log keeps every series'
        last sample, even across a prune) or queued."""
        si = s.astype(np.int64)
        known: B = self._seen[m, si].copy()
        if self._pending and not known.all():
            key = m * N_SIGNALS + si
            for pm, ps, *_ in self._pending:
                known |= np.isin(key, pm * N_SIGNALS + ps.astype(np.int64))
        return known

    def _raise_watermark(self, m: I64, t: F64) -> None:
        if len(t) > 1024 and not (t[1:] < t[:-1]).any():
            # A batch in time order (as the bus delivers it): each machine's last sample is its newest.
            # With repeated indices a fancy assignment keeps the last value.
            last = np.full(self.cp.n, -1, np.int64)
            last[m] = np.arange(len(m))
            hit = np.flatnonzero(last >= 0)
            self.watermark[hit] = np.maximum(self.watermark[hit], t[last[hit]])
        else:
            np.maximum.at(self.watermark, m, t)

    def connector_status(self, machines: Sequence[str], state: str, ts: float, session: str = "") -> None:
        """A connector went offline (its MQTT last will) or came back.

        While offline, its machines' time after the offline moment is `unknown`. A connector that comes
        back with the same session spooled its samples, so nothing was lost and the unknown is lifted;
        a new session (the process restarted) lost what happened in between, so the gap stays unknown.
        """
        idx = np.array([self.cp.index[mm] for mm in machines if mm in self.cp.index], dtype=np.int64)
        if idx.size == 0:
            return
        key = ",".join(sorted(machines))
        self._timeline = None
        self._tail_dirty[idx] = True
        if state == "offline":
            self.offline_since[idx] = np.where(np.isnan(self.offline_since[idx]), ts, self.offline_since[idx])
            if session:
                # the session that ended: when the first message seen is a retained last will, the next
                # online of another session is still known to be a restart
                self._sessions[key] = session
            return
        prev_session = self._sessions.get(key)
        self._sessions[key] = session
        gap_from = self.offline_since[idx]
        self.offline_since[idx] = np.nan
        restarted = prev_session is not None and prev_session != session
        lost = idx[np.isfinite(gap_from)] if restarted else idx[:0]
        if lost.size:
            k = lost.size
            # The gap is unknown from the moment the old session died until the new one came online;
            # from then on the machine is in the state its PLC reports, even when that value (with its
            # original source time) is older than the gap: a RESUME row re-applies the latest state.
            self._pending.append((np.concatenate([lost, lost]), np.full(2 * k, GAP, np.int8),
                                  np.concatenate([gap_from[np.isfinite(gap_from)], np.full(k, ts)]),
                                  np.concatenate([np.full(k, float(R_OFFLINE)), np.full(k, RESUME)]),
                                  np.full(2 * k, GOOD, np.int8)))

    # ------------------------------------------------------------------ derive (incremental)

    def timeline(self, now: float) -> Timeline:
        if self._timeline is not None and self._timeline.now == now:
            return self._timeline
        self.advance(now)
        tl = self._tail(now)
        self._timeline = tl
        return tl

    def advance(self, now: float) -> None:
        """Derive every queued sample older than `now` into the tables (the tail is built separately)."""
        if self.origin is None:
            self.origin = math.floor(now / 3600.0) * 3600.0 - self.retention_s
        if not self._ready:
            self._init_arenas(self.origin)
        for cal in self._cals:
            cal.ensure(now + DAY)
        if now < self._derived_now:
            self._rebuild_all(now)
            return
        if now - self.retention_s - self._prune_every_s >= self.origin:
            self._prune(now)
        if not self._pending:
            self._derived_now = max(self._derived_now, now)
            return
        parts = self._pending
        if len(parts) == 1:
            m, s, t, v, q = parts[0]
        else:
            m, s, t, v, q = (np.concatenate([p[i] for p in parts]) for i in range(5))
        if len(t) and float(t.min()) < self.origin:
            # A connector gap that began before the engine's memory (an offline moment older than the
            # origin): unknown from the origin on, as a sample older than the origin holds from it. (Samples
            # are placed at ingest; one a prune left behind is the prune's to anchor, not moved here.)
            t = np.where((s == GAP) & (t < self.origin), self.origin, t)
        due = t < now
        if not due.all():
            fut = ~due
            self._pending = [(m[fut], s[fut], t[fut], v[fut], q[fut])]
            m, s, t, v, q = m[due], s[due], t[due], v[due], q[due]
        else:
            self._pending = []
        self._derived_now = now
        if len(t) == 0:
            return
        # Machines with a sample older than rows already derived that it changes are re-derived from their log.
        older = self._lands_before_derived(m, s, t)
        if self._tie_last.any():
            si = s.astype(np.int64)
            older |= self._tie_last[m, si] & (t == self._last_t[m, si])
        if older.any():
            redo = np.unique(m[older])
            mark = np.zeros(self.cp.n, np.bool_)
            mark[redo] = True
            in_redo = mark[m]
            self._rederive(redo, mark, (m[in_redo], s[in_redo], t[in_redo], v[in_redo], q[in_redo]))
            rest = ~in_redo
            m, s, t, v, q = m[rest], s[rest], t[rest], v[rest], q[rest]
        if len(t) == 0:
            return
        assert self.origin is not None
        m, s, t, v, q = _sort_mst(m, s, t, v, q, self._span, self.origin)
        dup = _dup_mask(m, s, t, v, q)
        # ... and against the newest derived sample of the same series. Only a series' leading rows can
        # be at its last derived time (the rows are not older than it, and sorted per series):
        # the full test runs only when the first row of some series in the batch is at that time.
        si = s.astype(np.int64)
        sfirst = np.ones(len(t), np.bool_)
        sfirst[1:] = (m[1:] != m[:-1]) | (s[1:] != s[:-1])
        fi = np.flatnonzero(sfirst)
        if (t[fi] == self._last_t.ravel()[m[fi] * N_SIGNALS + si[fi]]).any():
            lt, lv, lq = self._last_t[m, si], self._last_v[m, si], self._last_q[m, si]
            dup |= (t == lt) & ((v == lv) | (np.isnan(v) & np.isnan(lv))) & (q == lq)
        if dup.any():
            self.stats.duplicates += int(dup.sum())
            keep = ~dup
            m, s, t, v, q = m[keep], s[keep], t[keep], v[keep], q[keep]
        m, s, t, v, q = self._log_batch(m, s, t, v, q)
        self._derive(m, s, t, v, q)

    def _lands_before_derived(self, m: I64, s: I8, t: F64) -> B:
        """The samples that land before rows already derived from their own series or from a series whose
        rows they change; their machines are derived again from the log.

        Each table is appended to in time order, so a sample needs that only when it is older than the newest
        derived sample of a series feeding the same rows: a state sample against the machine's state signals
        (and its counts, where counts make its state), a counter sample against its own series (and the
        product changes, on machines with several products), a product change against the counts it would
        assign to another product. A machine whose state and counts come over two connectors with different
        delays (an OPC UA subscription and a Modbus poll) then derives each as it comes, instead of deriving
        its whole log again at every tick."""
        older = t < self.frontier[m]  # a superset, cheap: only those samples are looked at closer
        cand = np.flatnonzero(older)
        if not len(cand):
            return older
        m, s, t = m[cand], s[cand], t[cand]
        lt = self._last_t[m]  # newest derived sample per series (nan: none)
        si = s.astype(np.int64)
        own = lt[np.arange(len(t)), si]
        counts = self.cp.uses_counts[m]
        state_front = np.fmax.reduce(lt[:, _STATE_SIGNALS], axis=1)
        state_front = np.where(counts, np.fmax(state_front, lt[:, TOTAL]), state_front)
        is_state = np.isin(s, _STATE_SIGNALS) | ((s == TOTAL) & counts)
        sub = (t < own) | (is_state & (t < state_front))
        if self._any_multi:
            multi = self._multi_product[m]
            sub |= multi & _IS_COUNTER[si] & (t < lt[:, PRODUCT])
            sub |= multi & (s == PRODUCT) & (t < np.fmax.reduce(lt[:, _COUNTER_SIGNALS], axis=1))
        older[cand] = sub
        return older

    @property
    def _drop_repeats_on(self) -> bool:
        # A repeated sample changes no derived row, but its time would count for `stale_after_s` if `now`
        # ever went back to before it (`_rebuild_all`): with that policy every sample is kept.
        return self.policies.stale_after_s is None

    def _log_append(self, m: I64, s: I8, t: F64, v: F64, q: I8) -> int:
        log = self._log
        if self._drop_repeats_on and log.full(len(t)):
            # Settled repeats go before the log grows: no sample older than a machine's newest minus
            # allowed_lateness_s is accepted any more, so nothing can come between them and their series'
            # previous sample (a first sample of a new series can, but it is another series).
            # Not while the machine's connector is offline either: should it come back as a new session,
            # the gap rows are dated from the offline moment, however long ago, and a repeat after that
            # moment is a change again (it ends the unknown time).
            n = log.n
            settled = self.watermark - self.policies.allowed_lateness_s
            gone = np.empty(n, np.bool_)
            for a in range(0, n, REWRITE_CHUNK):  # temporaries of a chunk, not of the whole log
                b = min(a + REWRITE_CHUNK, n)
                lm, lt = log.m[a:b], log.t[a:b]
                gone[a:b] = log.rep[a:b] & (lt < settled[lm]) & ~(lt >= self.offline_since[lm])
            if int(gone.sum()) * 8 >= n:
                at = np.flatnonzero(self._log_pos >= 0)
                self._log_pos[at] = log.drop(gone, self._log_pos[at])
        return log.append(m, s, t, v, q)

    def _forget_repeats(self, ms: I64, since: F64, at: I64) -> None:
        """Machines `ms` re-derived because of samples from `since` (per machine) on; `at`: their entries in
        the log. A late sample may now sit between a repeat and the sample it repeated, so marks from then on
        go (older ones stay repeats)."""
        if not len(ms):
            return
        log = self._log
        log.rep[at] &= log.t[at] < since[log.m[at]]
        self._log_pos.reshape(-1, N_SIGNALS)[ms] = -1

    def _log_batch(self, m: I64, s: I8, t: F64, v: F64, q: I8) -> Cols:
        """Log the batch (sorted by series, newer than what was derived) and return the samples that need
        deriving: all but those that repeat their series' previous value and quality and are not its
        newest in the batch.

        PLCs polled every second mostly repeat themselves: a state code or a reject counter stays the same
        for minutes. Such a sample adds no derived row (a repeated state merges into the row before, a
        repeated counter value counts nothing). It is logged and marked; once settled (older than the
        machine's newest sample minus allowed_lateness_s) it leaves the log, because re-deriving without
        it then gives the same rows. A series' newest sample is kept (duplicates are judged against it);
        when a newer one arrives, the old newest is marked if it was a repeat."""
        n = len(t)
        if n == 0 or not self._drop_repeats_on:
            self._log_append(m, s, t, v, q)
            return m, s, t, v, q
        g = m * N_SIGNALS + s.astype(np.int64)
        first = np.ones(n, np.bool_)
        first[1:] = g[1:] != g[:-1]
        last = np.ones(n, np.bool_)
        last[:-1] = first[1:]
        fi = np.flatnonzero(first)
        gf = g[fi]
        pv, pq, pt = _shift1(v), _shift1(q), _shift1(t)
        pv[fi] = self._last_v.ravel()[gf]
        pq[fi] = self._last_q.ravel()[gf]
        pt[fi] = self._last_t.ravel()[gf]
        # A connector gap row between a sample and the one it repeats makes it a change again (it ends the
        # unknown time): no repeats across the machine's latest gap row, none for machines with one here.
        rep = (v == pv) & (q == pq) & (s != GAP) & (pt > self._last_gap_t[m])
        gap = s == GAP
        if gap.any():
            rep &= ~np.isin(m, m[gap])
        p = self._log_pos[gf]
        self._log.rep[p[(p >= 0) & self._log_rep[gf]]] = True
        start = self._log_append(m, s, t, v, q)
        inner = rep & ~last
        self._log.rep[start + np.flatnonzero(inner)] = True
        li = np.flatnonzero(last)
        self._log_pos[g[li]] = start + li
        self._log_rep[g[li]] = rep[li]
        if not inner.any():
            return m, s, t, v, q
        keep = ~inner
        return m[keep], s[keep], t[keep], v[keep], q[keep]

    def _rederive(self, redo: I64, mark: B, new: Cols) -> None:
        """Forget what was derived for `redo` and derive those machines again from their log plus `new`."""
        assert self.origin is not None
        self.stats.rederived_machines += len(redo)
        lm, ls, lt, lv, lq = self._log.view()
        at = np.flatnonzero(mark[lm])  # the one pass over the whole log
        old = (lm[at], ls[at], lt[at], lv[at], lq[at])
        k_old = len(old[0])
        cols = tuple(np.concatenate([o, n_]) for o, n_ in zip(old, new, strict=True))
        src = np.concatenate([np.zeros(k_old, np.int8), np.ones(len(new[0]), np.int8)])
        g = cols[0] * N_SIGNALS + cols[1].astype(np.int64)
        order = np.argsort(g.astype(np.float64) * self._span + (cols[2] - self.origin), kind="stable")
        m, s, t, v, q = (c[order] for c in cols)
        src = src[order]
        dup = _dup_mask(m, s, t, v, q)  # only new rows can repeat an earlier one: the log has none
        self.stats.duplicates += int(dup.sum())
        add = (src == 1) & ~dup
        since = np.full(self.cp.n, np.inf)
        np.minimum.at(since, new[0], new[2])
        self._forget_repeats(redo, since, at)
        self._log_append(m[add], s[add], t[add], v[add], q[add])
        keep = ~dup
        m, s, t, v, q = m[keep], s[keep], t[keep], v[keep], q[keep]
        self._forget(redo)
        self._derive(m, s, t, v, q)

    def _forget(self, ms: I64) -> None:
        self._epoch += 1
        self._tail_dirty[ms] = True
        n_ctr = (ms[:, None] * N_CTR + np.arange(N_CTR)).ravel()
        self._sa.truncate(ms, np.zeros(len(ms), np.int64))
        self._ca.truncate(n_ctr, np.zeros(len(n_ctr), np.int64))
        self._clamp_cursors(ms)
        assert self.origin is not None
        k = len(ms)
        self._sa.append(ms, np.full(k, self.origin), cls=np.full(k, UNKNOWN, np.int8),
                        reason=np.full(k, R_NO_DATA, np.int32), scum=np.zeros((k, N_CLASSES)), stops=np.zeros(k),
                        flag=np.zeros(k, np.int8), p=np.zeros(k))
        self.frontier[ms] = -np.inf
        self._ser_v[n_ctr] = np.nan
        self._cend[n_ctr] = 0.0
        self._last_t[ms], self._last_v[ms], self._last_q[ms] = np.nan, np.nan, -1
        self._tie_last[ms] = False
        self._real_cls[ms], self._real_reason[ms] = -1, 0
        self._last_count[ms] = -np.inf
        self._cur_p[ms] = self.cp.default_product[ms]
        self._prev_p[ms] = self.cp.default_product[ms]
        self._cur_pt[ms] = -np.inf
        self._run_pos[ms], self._run_t[ms] = -1, np.nan
        self._resets[ms], self._rolls[ms] = 0, 0
        self._seen[ms] = False

    def _prune(self, now: float) -> None:
        """Forget what is older than the retention horizon, without deriving anything again.

        The log keeps each series' last sample before the new origin as its anchor (moved to the origin);
        each state segment keeps the row in force at the origin (and an open stop's rows), each counter
        segment its last row before it (the base the next increments add to). Keys and the calendar's
        production seconds are made relative to the new origin. Cumulative sums are left as they are: only
        their differences are ever used."""
        assert self.origin is not None
        new_origin = math.floor((now - self.retention_s) / 3600.0) * 3600.0
        self.stats.prunes += 1
        lm, ls, lt, _v, _q = self._log.view()
        old = lt < new_origin
        if old.any():
            oi = np.flatnonzero(old)
            g = lm[oi] * N_SIGNALS + ls[oi].astype(np.int64)
            order = np.lexsort((lt[oi], g))
            go = g[order]
            last = np.ones(len(go), np.bool_)
            last[:-1] = go[1:] != go[:-1]
            anchors = oi[order[last]]
            gone = old
            gone[anchors] = False
            lt[anchors] = new_origin  # (a view of the log)
            self._log.drop(gone, np.zeros(0, np.int64))
            self._log.rep[: self._log.n] = False
            self._log_pos[:] = -1
        cp = self.cp
        n_m = cp.n
        sa, ca = self._sa, self._ca
        ms = np.arange(n_m, dtype=np.int64)
        s_drop = sa.search(ms, np.full(n_m, new_origin), "right") - 1 - sa.start
        s_drop = np.where(self._run_pos >= 0, np.minimum(s_drop, self._run_pos), s_drop)
        s_drop = np.clip(s_drop, 0, sa.len - 1)
        cs = np.arange(n_m * N_CTR, dtype=np.int64)
        c_drop = np.maximum(ca.search(cs, np.full(len(cs), new_origin), "left") - ca.start - 1, 0)
        c_drop = np.minimum(c_drop, ca.len)
        shift = np.array([cal.seconds(np.array([new_origin]), CAL_PRODUCTION)[0] for cal in self._cals])
        sa.compact(drop=s_drop, origin=new_origin)
        ca.compact(drop=c_drop, origin=new_origin)
        live = _ranges(sa.start, sa.len)
        sa.cols["p"][live] -= shift[cp.calendar_of[np.repeat(ms, sa.len)]]
        self._run_pos = np.where(self._run_pos >= 0, self._run_pos - s_drop, -1)
        self.origin = new_origin
        for cal in self._cals:
            cal.rebase(new_origin)
            cal.ensure(max(now, new_origin) + 3 * DAY)
        self._cursors = {}
        self._prev_tail = None
        self._tail_dirty[:] = True
        self._epoch += 1
        self._timeline = None

    def _rebuild_all(self, now: float) -> None:
        """Prune samples older than the retention horizon (each series keeps its last one as its anchor,
        moved to the new origin) and derive everything again: once a day, or if `now` went backwards."""
        self.stats.full_rebuilds += 1
        lm, ls, lt, lv, lq = (a.copy() for a in self._log.view())
        pend = self._pending
        self._pending = []
        assert self.origin is not None
        origin = self.origin
        if now - self.retention_s - self._prune_every_s >= origin:
            origin = math.floor((now - self.retention_s) / 3600.0) * 3600.0
        self._reset_derived()
        self._init_arenas(origin)
        all_m = np.concatenate([lm, *[p[0] for p in pend]])
        all_s = np.concatenate([ls, *[p[1] for p in pend]])
        all_t = np.concatenate([lt, *[p[2] for p in pend]])
        all_v = np.concatenate([lv, *[p[3] for p in pend]])
        all_q = np.concatenate([lq, *[p[4] for p in pend]])
        g = all_m * N_SIGNALS + all_s.astype(np.int64)
        base = min(origin, float(all_t.min())) if len(all_t) else origin
        span = float(all_t.max() - base) + 1.0 if len(all_t) else 1.0
        order = np.argsort(g.astype(np.float64) * span + (all_t - base), kind="stable")
        m, s, t, v, q = all_m[order], all_s[order], all_t[order], all_v[order], all_q[order]
        dup = _dup_mask(m, s, t, v, q)
        self.stats.duplicates += int(dup.sum())
        keep = ~dup
        m, s, t, v, q = m[keep], s[keep], t[keep], v[keep], q[keep]
        n = len(t)
        if n:
            last_of_series = np.ones(n, np.bool_)
            last_of_series[:-1] = (m[1:] != m[:-1]) | (s[1:] != s[:-1]) | (t[1:] >= origin)
            keep = (t >= origin) | last_of_series
            t = np.where(keep & (t < origin), origin, t)
            m, s, t, v, q = m[keep], s[keep], t[keep], v[keep], q[keep]
        fut = t >= now
        if fut.any():
            self._pending = [(m[fut], s[fut], t[fut], v[fut], q[fut])]
            due = ~fut
            m, s, t, v, q = m[due], s[due], t[due], v[due], q[due]
        self._log.replace(m, s, t, v, q)
        self._log_pos[:] = -1
        self._derived_now = now
        self._derive(m, s, t, v, q)

    def _derive(self, m: I64, s: I8, t: F64, v: F64, q: I8) -> None:
        """Append the rows of samples sorted by (machine, signal, time), all newer than what was derived for
        their machines (or all of a machine's samples after `_forget`)."""
        if len(t) == 0:
            return
        self._epoch += 1
        cp = self.cp
        assert self.origin is not None
        origin, span = self.origin, self._span
        n_m = cp.n
        good = q == GOOD
        si = s.astype(np.int64)
        # --- bookkeeping per machine: newest time, last sample of each series, signals seen
        g = m * N_SIGNALS + si
        last_g = np.ones(len(g), np.bool_)
        last_g[:-1] = g[1:] != g[:-1]
        li = np.flatnonzero(last_g)
        lm_, lg_, lt_ = m[li], g[li], t[li]
        tie = lt_ == self._last_t.ravel()[lg_]
        tie[1:] |= (g[li[1:] - 1] == lg_[1:]) & (t[li[1:] - 1] == lt_[1:])
        if li[0] > 0:
            tie[0] |= (g[li[0] - 1] == lg_[0]) & (t[li[0] - 1] == lt_[0])
        self._tie_last.ravel()[lg_] = tie
        self._last_t.ravel()[lg_], self._last_v.ravel()[lg_], self._last_q.ravel()[lg_] = lt_, v[li], q[li]
        self._seen.ravel()[lg_] = True
        np.maximum.at(self.frontier, lm_, lt_)

        # --- counters: increments per series, with rollover and reset
        k = _SIG_CTR[si]
        # (index arrays rather than boolean masks: NumPy gathers by index several times faster)
        ctr = np.flatnonzero((k >= 0) & good)
        cm, ck, ct, cv = m[ctr], k[ctr], t[ctr], v[ctr]
        sid = cm * N_CTR + ck
        first = np.ones(len(sid), np.bool_)
        first[1:] = sid[1:] != sid[:-1]
        prev = np.empty_like(cv)
        prev[1:] = cv[:-1]
        fi = np.flatnonzero(first)
        prev[fi] = self._ser_v[sid[fi]]
        has = ~np.isnan(prev)
        d = np.where(has, cv - prev, 0.0)
        mod = cp.counter_modulus[cm]
        neg = has & (d < 0)
        roll = neg & (mod > 0) & (prev >= 0.9 * mod)
        reset = neg & ~roll
        d = np.where(roll, d + mod, np.where(reset, cv, d))
        if reset.any():
            self._resets += np.bincount(cm[reset], minlength=n_m)
        if roll.any():
            self._rolls += np.bincount(cm[roll], minlength=n_m)
        last_sid = np.flatnonzero(np.append(first[1:], True)) if len(sid) else fi
        self._ser_v[sid[last_sid]] = cv[last_sid]

        # --- products: a count is of the product set strictly before it
        if self._any_product:
            psel = np.flatnonzero((s == PRODUCT) & good & np.isfinite(v))
        else:
            psel = np.zeros(0, np.int64)
        pm, pt, pv = m[psel], t[psel], v[psel].astype(np.int64)
        nz = np.flatnonzero(d)
        zm, zk, zt, zd = cm[nz], ck[nz], ct[nz], d[nz]
        prod = cp.default_product[zm]
        mp = np.flatnonzero(self._multi_product[zm]) if self._any_multi else np.zeros(0, np.int64)
        if len(mp):  # only machines with several products need to know which one each count is of
            ym, yt = zm[mp], zt[mp]
            yp = np.where(self._cur_pt[ym] < yt, self._cur_p[ym], self._prev_p[ym])
            if len(pm):
                pkey = pm.astype(np.float64) * span + (pt - origin)
                pi = np.searchsorted(pkey, ym.astype(np.float64) * span + (yt - origin), side="left") - 1
                pic = np.clip(pi, 0, len(pm) - 1)
                inb = (pi >= 0) & (pm[pic] == ym)
                yp = np.where(inb, pv[pic], yp)
            prod[mp] = yp
        if len(pm):
            lastp = np.ones(len(pm), np.bool_)
            lastp[:-1] = pm[1:] != pm[:-1]
            li = np.flatnonzero(lastp)
            mm = pm[li]
            before = li - 1
            has_b = (before >= 0) & (pm[np.maximum(before, 0)] == mm)
            self._prev_p[mm] = np.where(has_b, pv[np.maximum(before, 0)], self._cur_p[mm])
            self._cur_p[mm] = pv[li]
            self._cur_pt[mm] = pt[li]
        ideal = zd * cp.sec_per_unit[zm, prod]
        if len(zd):
            zseg = zm * N_CTR + zk
            fz = np.ones(len(zseg), np.bool_)
            fz[1:] = zseg[1:] != zseg[:-1]
            vals = _seg_cumsum(np.stack([zd, ideal], axis=1), fz, _take_rows(self._cend, zseg[np.flatnonzero(fz)]))
            self._ca.append(zseg, zt, cum=vals)
            li = np.flatnonzero(np.append(fz[1:], True))
            _put_rows(self._cend, zseg[li], _take_rows(vals, li))

        # --- state rows from samples
        run_bit = cp.uses_run_bit[m]
        sel = np.flatnonzero(((s == STATE) & ~run_bit) | ((s == RUN) & run_bit) | (s == GAP))
        sm, st, sv, sq, ss = m[sel], t[sel], v[sel], q[sel], s[sel]
        n_codes = cp.state_class.shape[1]
        code = np.where(np.isfinite(sv), sv, -1).astype(np.int64)
        in_range = (code >= 0) & (code < n_codes)
        code_c = np.clip(code, 0, n_codes - 1)
        cls = np.full(len(st), UNKNOWN, np.int8)
        reason = np.full(len(st), R_UNMAPPED, np.int64)
        is_state = ss == STATE
        flat = sm * n_codes + code_c
        mapped = is_state & in_range & self._state_mapped[flat]
        cls = np.where(mapped, self._state_class[flat], cls).astype(np.int8)
        reason = np.where(mapped, self._state_reason[flat], reason)
        is_run = ss == RUN
        if is_run.any():
            cls[is_run] = np.where(sv[is_run] != 0, RUNNING, UNPLANNED_STOP)
            reason[is_run] = np.where(sv[is_run] != 0, R_NONE, R_STOPPED)
        bad = (is_state | is_run) & (sq != GOOD)
        if bad.any():
            cls[bad] = UNKNOWN
            reason[bad] = R_BAD
        gap = ss == GAP
        if gap.any():
            np.maximum.at(self._last_gap_t, sm[gap], st[gap])
            cls[gap] = UNKNOWN
            reason[gap] = np.where(sv[gap] == RESUME, R_OFFLINE, sv[gap]).astype(np.int64)
        # 1: a real state sample, 2: a RESUME row (takes the class of the latest real sample before it)
        srcflag = np.where(is_state | is_run, 1, np.where(gap & (sv == RESUME), 2, 0)).astype(np.int8)

        # Machines without a state signal: running from each count, stopped once no count came for
        # no_count_stop_after_s (the stop starts at that moment, not at the last count).
        if self._any_counts:
            cnt = np.flatnonzero((ck == C_TOTAL) & (d > 0) & cp.uses_counts[cm])
        else:
            cnt = np.zeros(0, np.int64)
        km, kt = cm[cnt], ct[cnt]
        if len(km):
            kprev = np.empty_like(kt)
            kprev[1:] = kt[:-1]
            kfirst = np.ones(len(km), np.bool_)
            kfirst[1:] = km[1:] != km[:-1]
            kprev[kfirst] = self._last_count[km[kfirst]]
            gap_after = cp.no_count_stop_after[km]
            stops_at = np.isfinite(kprev) & ((kt - kprev) > gap_after)
            klast = np.ones(len(km), np.bool_)
            klast[:-1] = km[1:] != km[:-1]
            self._last_count[km[klast]] = kt[klast]
            xm = [sm, km, km[stops_at]]
            xt = [st, kt, kprev[stops_at] + gap_after[stops_at]]
            xc = [cls, np.full(len(kt), RUNNING, np.int8), np.full(int(stops_at.sum()), UNPLANNED_STOP, np.int8)]
            xr = [reason, np.full(len(kt), R_NONE, np.int64), np.full(int(stops_at.sum()), R_NO_COUNT, np.int64)]
            xf = [srcflag, np.zeros(len(kt), np.int8), np.zeros(int(stops_at.sum()), np.int8)]
        else:
            xm, xt, xc, xr, xf = [sm], [st], [cls], [reason], [srcflag]
        # The open stop of each touched machine is taken back and derived again with the new rows: its
        # rows' class (micro or unplanned) is only known once it ends.
        if self.policies.stale_after_s is not None:
            self._tail_dirty[lm_] = True  # a newer sample moves the stale moment
        if len(xm) > 1 or len(sm):
            mark = np.zeros(n_m, np.bool_)
            for part in xm:
                mark[part] = True
            touched = np.flatnonzero(mark)
        else:
            touched = np.zeros(0, np.int64)
        if len(touched) == 0:
            return
        self._tail_dirty[touched] = True  # only machines with new state rows have a new open end
        sa = self._sa
        rw = touched[self._run_pos[touched] >= 0]
        if len(rw):
            rstart = sa.start[rw] + self._run_pos[rw]
            rcount = sa.len[rw] - self._run_pos[rw]
            ridx = _ranges(rstart, rcount)
            xm.insert(0, np.repeat(rw, rcount))
            xt.insert(0, sa.t[ridx])
            xc.insert(0, sa.cols["cls"][ridx])
            xr.insert(0, sa.cols["reason"][ridx].astype(np.int64))
            xf.insert(0, np.zeros(len(ridx), np.int8))
            sa.truncate(rw, self._run_pos[rw])
            self._run_pos[rw] = -1
            self._clamp_cursors(rw)
        rm = np.concatenate(xm)
        rt = np.concatenate(xt)
        rc = np.concatenate(xc).astype(np.int8)
        rr = np.concatenate(xr).astype(np.int64)
        rf = np.concatenate(xf)
        rkey = rm.astype(np.float64) * span + (rt - origin)
        if len(rkey) > 1 and not np.all(rkey[1:] >= rkey[:-1]):
            order = np.argsort(rkey, kind="stable")
            rm, rt, rc, rr, rf = rm[order], rt[order], rc[order], rr[order], rf[order]
        n = len(rt)
        pos = np.arange(n)
        rfirst = np.ones(n, np.bool_)
        rfirst[1:] = rm[1:] != rm[:-1]
        # RESUME rows take the latest real state before them (in this step, or carried over)
        real = rf == 1
        resume = rf == 2
        if resume.any():
            seg_start = np.maximum.accumulate(np.where(rfirst, pos, 0))
            last_real = np.maximum.accumulate(np.where(real, pos, -1))
            inb = resume & (last_real >= seg_start)
            carried = resume & ~inb & (self._real_cls[rm] >= 0)
            lr = np.maximum(last_real, 0)
            rc = np.where(inb, rc[lr], np.where(carried, self._real_cls[rm], rc)).astype(np.int8)
            rr = np.where(inb, rr[lr], np.where(carried, self._real_reason[rm], rr))
        if real.any():
            rlast = np.zeros(n, np.bool_)
            ri = np.flatnonzero(real)
            rl = np.ones(len(ri), np.bool_)
            rl[:-1] = rm[ri[1:]] != rm[ri[:-1]]
            rlast[ri[rl]] = True
            self._real_cls[rm[rlast]] = rc[rlast]
            self._real_reason[rm[rlast]] = rr[rlast]
        # previous row of each machine: the last one in the table
        lpos = sa.last(touched)
        tpos = np.full(n_m, -1, np.int64)
        tpos[touched] = lpos
        ppos = tpos[rm]
        pcls = np.where(rfirst, sa.cols["cls"][ppos], _shift1(rc)).astype(np.int8)
        preason = np.where(rfirst, sa.cols["reason"][ppos].astype(np.int64), _shift1(rr))
        # Consecutive rows with the same class and reason are one row.
        keep = (rc != pcls) | (rr != preason)
        if not keep.all():
            rm, rt, rc, rr = rm[keep], rt[keep], rc[keep], rr[keep]
            n = len(rt)
            pos = np.arange(n)
            rfirst = np.ones(n, np.bool_)
            rfirst[1:] = rm[1:] != rm[:-1]
            ppos = tpos[rm]
            pcls = np.where(rfirst, sa.cols["cls"][ppos], _shift1(rc)).astype(np.int8)
        if n == 0:
            return
        rlast = np.ones(n, np.bool_)
        rlast[:-1] = rm[1:] != rm[:-1]
        # --- micro stops: a run of consecutive unplanned rows shorter than the threshold. The row before
        # a machine's first step row is never unplanned (an open stop was taken back above).
        unpl = rc == UNPLANNED_STOP
        prev_u = np.zeros(n, np.bool_)
        prev_u[1:] = unpl[:-1] & ~rfirst[1:]
        run_start = unpl & ~prev_u
        big = n + 1
        nxt_nonu = np.minimum.accumulate(np.where(~unpl, pos, big)[::-1])[::-1]
        end_i = np.minimum(nxt_nonu, n - 1)
        closed = (nxt_nonu < big) & (rm[end_i] == rm)
        dur = rt[end_i] - rt
        micro_start = run_start & closed & (dur < cp.microstop_threshold[rm])
        run_id = np.cumsum(run_start) - 1
        if run_start.any():
            micro_rows = unpl & micro_start[np.flatnonzero(run_start)][np.maximum(run_id, 0)]
            rc = np.where(micro_rows, np.int8(MICRO_STOP), rc).astype(np.int8)
            closed_rows = unpl & closed[np.flatnonzero(run_start)][np.maximum(run_id, 0)]
        else:
            closed_rows = np.zeros(n, np.bool_)
        stop_start = run_start & closed & ~micro_start
        # stop starts count where the calendar is in production (a boundary at t is already passed)
        if stop_start.any():
            ccls, _ = self._cal_state(rm[stop_start], rt[stop_start])
            ok_prod = np.zeros(n, np.bool_)
            ok_prod[np.flatnonzero(stop_start)] = ccls == CAL_PRODUCTION
            stop_start &= ok_prod
        # open stops: unplanned rows at a machine's end whose run has not ended
        open_rows = unpl & ~closed_rows
        # --- cumulative production seconds per class and stops before each row
        pcls_final = np.where(rfirst, pcls, _shift1(rc)).astype(np.int64)
        pflag = np.where(rfirst, sa.cols["flag"][ppos], _shift1(stop_start.astype(np.int8)))
        p_now = self._prod(rm, rt)
        p_prev = np.where(rfirst, sa.cols["p"][ppos], _shift1(p_now))
        contrib = np.zeros((n, N_CLASSES))
        contrib[pos, pcls_final] = p_now - p_prev
        fpos = ppos[rfirst]
        scum = _seg_cumsum(contrib, rfirst, _take_rows(sa.cols["scum"], fpos))
        stops = _seg_cumsum(pflag.astype(np.float64), rfirst, sa.cols["stops"][fpos])
        apos = sa.append(rm, rt, cls=rc, reason=rr.astype(np.int32), scum=scum, stops=stops,
                         flag=stop_start.astype(np.int8), p=p_now)
        # carry the open stop (its first row's index in the segment)
        om = rm[rlast]
        self._run_pos[om] = -1
        self._run_t[om] = np.nan
        ostart = open_rows & ~prev_u & run_start
        if ostart.any():
            oi = np.flatnonzero(ostart)
            mm = rm[oi]
            self._run_pos[mm] = apos[oi] - sa.start[mm]
            self._run_t[mm] = rt[oi]

    # ------------------------------------------------------------------ the open end, at now

    def _tail_compute(self, now: float, ms: I64) -> dict[str, Any]:
        """The open end of machines ms at now (see Timeline)."""
        cp = self.cp
        n_m = len(ms)
        sa = self._sa
        lpos = sa.last(ms)
        t0 = sa.t[lpos]
        c0 = sa.cols["cls"][lpos].astype(np.int8)
        r0 = sa.cols["reason"][lpos].astype(np.int64)
        # transient rows, in the order that breaks ties: offline, no count, stale
        off = self.offline_since[ms]
        off_ok = np.isfinite(off) & (off < now) & (off >= t0)
        last_count = self._last_count[ms]
        nc_t = last_count + cp.no_count_stop_after[ms]
        nc_ok = cp.uses_counts[ms] & np.isfinite(last_count) & (nc_t < now) & (nc_t >= t0)
        stale_after = self.policies.stale_after_s
        if stale_after is not None:
            fr = self.frontier[ms]
            st_t = fr + stale_after
            st_ok = np.isfinite(fr) & (st_t < now)
        else:
            st_t = np.full(n_m, np.inf)
            st_ok = np.zeros(n_m, np.bool_)
        any_transient = bool(off_ok.any() or nc_ok.any() or st_ok.any())
        if any_transient:
            xt = np.stack([np.where(off_ok, off, now), np.where(nc_ok, nc_t, now), np.where(st_ok, st_t, now)],
                          axis=1)
            xc = np.stack([np.full(n_m, UNKNOWN), np.where(nc_ok, UNPLANNED_STOP, UNKNOWN),
                           np.full(n_m, UNKNOWN)], axis=1).astype(np.int8)
            xr = np.stack([np.where(off_ok, R_OFFLINE, R_NONE), np.where(nc_ok, R_NO_COUNT, R_NONE),
                           np.where(st_ok, R_STALE, R_NONE)], axis=1).astype(np.int64)
            xp = np.stack([off_ok, nc_ok, st_ok], axis=1)
            order = np.argsort(xt, axis=1, kind="stable")
            xt = np.take_along_axis(xt, order, 1)
            xc = np.take_along_axis(xc, order, 1)
            xr = np.take_along_axis(xr, order, 1)
            xp = np.take_along_axis(xp, order, 1)
        else:  # the usual case: every machine's open end is just its last row
            xt = np.full((n_m, N_TAIL - 1), now)
            xc = np.full((n_m, N_TAIL - 1), UNKNOWN, np.int8)
            xr = np.full((n_m, N_TAIL - 1), R_NONE, np.int64)
            xp = np.zeros((n_m, N_TAIL - 1), np.bool_)
        tt = np.concatenate([t0[:, None], xt, np.full((n_m, 1), now)], axis=1)
        tc = np.concatenate([c0[:, None], xc], axis=1)
        tr = np.concatenate([r0[:, None], xr], axis=1)
        present = np.concatenate([np.ones((n_m, 1), np.bool_), xp], axis=1)
        # stops in the tail: the open stop (it began at run_t, in the table) and a no-count stop
        u = (tc == UNPLANNED_STOP) & present
        has_run = self._run_pos[ms] >= 0
        starts = np.empty((n_m, N_TAIL))
        run_t0 = self._run_t[ms]
        cur = np.where(u[:, 0] & has_run, run_t0, tt[:, 0])
        starts[:, 0] = cur
        for j in range(1, N_TAIL):
            cur = np.where(u[:, j] & u[:, j - 1], cur, tt[:, j])
            starts[:, j] = cur
        ends = np.empty((n_m, N_TAIL))
        nxt = np.full(n_m, now)
        for j in range(N_TAIL - 1, -1, -1):
            ends[:, j] = nxt
            nxt = np.where(u[:, j], nxt, tt[:, j])
        micro = u & ((ends - starts) < cp.microstop_threshold[ms][:, None])
        tc = np.where(micro, np.int8(MICRO_STOP), tc).astype(np.int8)
        first_of_run = u.copy()
        first_of_run[:, 1:] &= ~u[:, :-1]
        counted = first_of_run & ~micro
        stop_t = np.where(counted, starts, np.inf)
        if counted.any():
            ci = np.flatnonzero(counted.ravel())
            ccls, _ = self._cal_state(np.repeat(ms, N_TAIL)[ci], stop_t.ravel()[ci])
            flat = stop_t.ravel()
            flat[ci[ccls != CAL_PRODUCTION]] = np.inf
            stop_t = flat.reshape(n_m, N_TAIL)
        fix = u[:, 0] & micro[:, 0] & has_run
        # production seconds at the tail rows: the last row's is stored, now's is one per calendar
        tp = np.empty((n_m, N_TAIL + 1))
        tp[:, 0] = sa.cols["p"][lpos]
        p_now = self._cal_at(ms, now, CAL_PRODUCTION)
        tp[:, 1:] = p_now[:, None]
        if any_transient:
            pi, pj = np.nonzero(xp)
            tp[pi, pj + 1] = self._prod(ms[pi], xt[pi, pj])
        run_t = np.where(fix, run_t0, t0)
        run_p = tp[:, 0].copy()
        if fix.any():
            fi = np.flatnonzero(fix)
            mf = ms[fi]
            run_p[fi] = sa.cols["p"][sa.start[mf] + self._run_pos[mf]]  # stored with the open stop's first row
        # current state: the last present tail row, under the calendar at now
        jcur = N_TAIL - 1 - np.argmax(present[:, ::-1], axis=1)
        rows_ = np.arange(n_m)
        cur_c = tc[rows_, jcur].astype(np.int64)
        cur_r = tr[rows_, jcur]
        since = tt[rows_, jcur]
        for j in range(N_TAIL - 1, 0, -1):
            back = (jcur >= j) & present[:, j - 1] & (tc[:, j - 1] == cur_c) & (tr[:, j - 1] == cur_r) & \
                (since == tt[:, j])
            since = np.where(back, tt[:, j - 1], since)
        cal_cls, cal_since = self._cal_state_at(ms, now)
        prod_now = cal_cls == CAL_PRODUCTION
        cur_cls = np.where(prod_now, cur_c, np.where(cal_cls == CAL_EXCLUDED, PLANNED_EXCLUDED, UNSCHEDULED))
        cur_reason = np.where(prod_now, cur_r, np.where(cal_cls == CAL_EXCLUDED, R_BREAK, R_UNSCHEDULED))
        cur_since = np.where(prod_now, np.maximum(since, cal_since), cal_since)
        return {"tt": tt, "tc": tc, "tr": tr, "tp": tp, "present": present, "fix": fix, "run_t": run_t,
                "run_p": run_p, "tail_stops": stop_t, "cur_cls": cur_cls.astype(np.int64),
                "cur_reason": cur_reason.astype(np.int64), "cur_since": cur_since,
                # an open stop still shorter than its threshold turns unplanned as now moves on
                "u_any": _any_rows(micro & present)}

    def _tail(self, now: float) -> Timeline:
        """The open end of every machine at now. Only machines whose end can have changed since the last
        timeline are computed again: new rows, a connector status, a stale or no-count moment or a micro-stop
        threshold passed, an open stop; a calendar boundary passed recomputes all."""
        cp = self.cp
        n_m = cp.n
        assert self.origin is not None
        sa = self._sa
        machines = np.arange(n_m, dtype=np.int64)
        prev = self._prev_tail
        full = prev is None or now < prev[0].now or any(
            bool(((cal.bt > prev[0].now) & (cal.bt <= now)).any()) for cal in self._cals)
        ms = machines
        if prev is not None and not full:
            p_now_t = prev[0].now
            cand = self._tail_dirty | prev[1] | np.isfinite(self.offline_since)
            nc_t = self._last_count + cp.no_count_stop_after
            cand |= cp.uses_counts & (nc_t >= p_now_t) & (nc_t < now)
            if self.policies.stale_after_s is not None:
                st_t = self.frontier + self.policies.stale_after_s
                cand |= (st_t >= p_now_t) & (st_t < now)
            ms = np.flatnonzero(cand)
            full = len(ms) > n_m // 2
        if full or prev is None:
            d = self._tail_compute(now, machines)
            tt, tc, tr, tp = d["tt"], d["tc"], d["tr"], d["tp"]
            present, fix, run_t, run_p = d["present"], d["fix"], d["run_t"], d["run_p"]
            stop_t, cur_cls, cur_reason, cur_since = d["tail_stops"], d["cur_cls"], d["cur_reason"], d["cur_since"]
            u_any = d["u_any"]
            changed_idx = machines
        else:
            tl0, u_any0, present0 = prev
            # unchanged machines: only the columns that sit at `now` move
            # Column 0, the last stored row, is always present; transient rows are rare: the rows that
            # have one are found by reading each row of `present` as one integer.
            p_now = self._cal_at(machines, now, CAL_PRODUCTION)
            tt = np.empty((n_m, N_TAIL + 1))
            tt[:, 0] = tl0.tt[:, 0]
            tt[:, 1:] = now
            tp = np.empty((n_m, N_TAIL + 1))
            tp[:, 0] = tl0.tp[:, 0]
            tp[:, 1:] = p_now[:, None]
            pres = np.ascontiguousarray(present0)
            held = np.flatnonzero(pres.view(np.uint32).reshape(n_m) != _ONLY_FIRST)
            if len(held):
                ph = pres[held, 1:]
                tt[held, 1:N_TAIL] = np.where(ph, tl0.tt[held, 1:N_TAIL], now)
                tp[held, 1:N_TAIL] = np.where(ph, tl0.tp[held, 1:N_TAIL], p_now[held, None])
            tc, tr = tl0.tc.copy(), tl0.tr.copy()
            present, fix, run_t, run_p = present0.copy(), tl0.fix.copy(), tl0.run_t.copy(), tl0.run_p.copy()
            stop_t = tl0.tail_stops.copy()
            cur_cls, cur_reason, cur_since = tl0.cur_cls.copy(), tl0.cur_reason.copy(), tl0.cur_since.copy()
            u_any = u_any0.copy()
            if len(ms):
                d = self._tail_compute(now, ms)
                for arr, key in ((tt, "tt"), (tc, "tc"), (tr, "tr"), (tp, "tp"), (present, "present"),
                                 (stop_t, "tail_stops")):
                    _put_rows(arr, ms, d[key])
                fix[ms], run_t[ms], run_p[ms] = d["fix"], d["run_t"], d["run_p"]
                cur_cls[ms], cur_reason[ms] = d["cur_cls"], d["cur_reason"]
                cur_since[ms], u_any[ms] = d["cur_since"], d["u_any"]
            changed_idx = ms
        # what fixed instants need to know: which machines' open end changed since the last timeline
        tail_changed = np.zeros(n_m, np.bool_)
        if prev is None:
            tail_changed[:] = True
        elif len(changed_idx):
            tl0, _u, present0 = prev
            ci = changed_idx
            tail_changed[ci] = (
                (sa.len[ci] != self._prev_len[ci])
                | _any_rows(np.where(_take_rows(present, ci), _take_rows(tt, ci)[:, :N_TAIL], np.inf)
                            != np.where(_take_rows(present0, ci), _take_rows(tl0.tt, ci)[:, :N_TAIL], np.inf))
                | _any_rows(_take_rows(tc, ci) != _take_rows(tl0.tc, ci)) | (fix[ci] != tl0.fix[ci])
                | (np.where(fix[ci], run_t[ci], 0.0) != np.where(tl0.fix[ci], tl0.run_t[ci], 0.0)))
        self._prev_len = sa.len.copy()
        self._tail_id += 1
        self._tail_dirty[:] = False
        lpos = sa.last(machines)
        seen = self._seen
        derive_reject = seen[:, GOOD_COUNT] & seen[:, TOTAL] & ~seen[:, REJECT]
        derive_total = seen[:, GOOD_COUNT] & seen[:, REJECT] & ~seen[:, TOTAL]
        tl = Timeline(
            now=now, origin=self.origin, tt=tt, tc=tc, tr=tr, tp=tp, last_pos=lpos, fix=fix, run_t=run_t,
            run_p=run_p, fix_p_end=tp[:, 0], tail_stops=stop_t,
            has_tail_stop=_any_rows(np.isfinite(stop_t)), tail_id=self._tail_id,
            tail_changed=tail_changed, ttT=np.ascontiguousarray(tt.T), tpT=np.ascontiguousarray(tp.T),
            tcT=np.ascontiguousarray(tc.T.astype(np.int64)), cur_cls=cur_cls, cur_reason=cur_reason,
            cur_since=cur_since, cur_product=self._cur_p.copy(), resets=self._resets.copy(),
            rollovers=self._rolls.copy(), derive_reject=derive_reject, derive_total=derive_total,
        )
        self._prev_tail = (tl, u_any, present)
        return tl

    # ------------------------------------------------------------------ look-ups

    def _row_data(self, pos: I64, m: I64) -> F64:
        """(n, 12) of state rows: cumulative class seconds (7), stops, stop flag, time, class, production
        seconds since origin at the row's time."""
        sa = self._sa
        out = np.empty((len(pos), N_CLASSES + 5))
        out[:, :N_CLASSES] = _take_rows(sa.cols["scum"], pos)
        out[:, N_CLASSES] = sa.cols["stops"][pos]
        out[:, N_CLASSES + 1] = sa.cols["flag"][pos]
        out[:, N_CLASSES + 2] = sa.t[pos]
        out[:, N_CLASSES + 3] = sa.cols["cls"][pos]
        out[:, N_CLASSES + 4] = sa.cols["p"][pos]
        return out

    def _cal_state_at(self, m: I64, x: float) -> tuple[I8, F64]:
        """`_cal_state` at one instant shared by all of m: one look-up per calendar."""
        per_cls = np.empty(len(self._cals), np.int8)
        per_since = np.empty(len(self._cals))
        for ci, cal in enumerate(self._cals):
            i = int(cal.index(np.array([x]))[0])
            per_cls[ci], per_since[ci] = cal.bc[i], cal.bt[i]
        if len(self._cals) == 1:
            return np.full(len(m), per_cls[0], np.int8), np.full(len(m), per_since[0])
        cal_of = self.cp.calendar_of[m]
        return per_cls[cal_of], per_since[cal_of]

    def _cal_at(self, m: I64, x: float, k: int) -> F64:
        """`_cal_eval` at one instant shared by all of m: one evaluation per calendar."""
        per_cal = np.array([cal.seconds(np.array([x]), k)[0] for cal in self._cals])
        return per_cal[self.cp.calendar_of[m]] if len(per_cal) > 1 else np.full(len(m), per_cal[0])

    def _state_at(self, tl: Timeline, m: I64, x: F64, pos: I64 | None = None,
                  rows_data: F64 | None = None, shared_x: float | None = None) -> tuple[F64, F64]:
        """Seconds per class in [origin, x) and counted stops starting before x, for each (m, x);
        `pos` (the last state row at or before x) and its `_row_data` when already known."""
        sa = self._sa
        n = len(x)
        lpos = tl.last_pos[m]
        if pos is None:
            pos = np.minimum(sa.search(m, x, "right") - 1, lpos)
        if rows_data is None:
            rows_data = self._row_data(pos, m)
        out = rows_data[:, :N_CLASSES].copy()
        t_row = rows_data[:, N_CLASSES + 2]
        stops = rows_data[:, N_CLASSES] + ((rows_data[:, N_CLASSES + 1] == 1) & (t_row < x))
        px = self._prod(m, x) if shared_x is None else self._cal_at(m, shared_x, CAL_PRODUCTION)
        rows = np.arange(n)
        body = pos < lpos
        if body.any():
            b = np.flatnonzero(body)
            out[b, rows_data[b, N_CLASSES + 3].astype(np.int64)] += px[b] - rows_data[b, N_CLASSES + 4]
        tail = ~body
        if tail.any():
            ti = rows[tail]
            mt = m[tail]
            pxt = px[tail]
            xt_ = x[tail]
            for j in range(N_TAIL):
                lo, hi = tl.tt[mt, j], tl.tt[mt, j + 1]
                inside = xt_ > lo
                add = np.where(inside, np.where(xt_ >= hi, tl.tp[mt, j + 1], pxt) - tl.tp[mt, j], 0.0)
                out[ti, tl.tc[mt, j]] += add
        fa = tl.fix[m] & (x > tl.run_t[m])
        if fa.any():
            f = np.flatnonzero(fa)
            mf = m[f]
            amt = np.where(x[f] >= tl.tt[mf, 0], tl.fix_p_end[mf], px[f]) - tl.run_p[mf]
            out[f, UNPLANNED_STOP] -= amt
            out[f, MICRO_STOP] += amt
        if shared_x is None:
            out[:, UNSCHEDULED] += self._cal_eval(m, x, 0)
            out[:, PLANNED_EXCLUDED] += self._cal_eval(m, x, CAL_EXCLUDED)
        else:
            out[:, UNSCHEDULED] += self._cal_at(m, shared_x, 0)
            out[:, PLANNED_EXCLUDED] += self._cal_at(m, shared_x, CAL_EXCLUDED)
        ts = np.flatnonzero(tl.has_tail_stop[m])
        if len(ts):
            stops[ts] += (tl.tail_stops[m[ts]] < x[ts, None]).sum(axis=1)
        return out, stops

    def _counts_at(self, m: I64, x: F64, i: I64 | None = None) -> F64:
        """(2 * N_CTR, n): cumulative increments and ideal seconds of each counter before x; `i` (per
        machine and counter, the first row at or after x) when already known."""
        ca = self._ca
        n = len(x)
        seg = (m[:, None] * N_CTR + np.arange(N_CTR)).ravel()
        if i is None:
            i = ca.search(seg, np.repeat(x, N_CTR), "left")
        has = i > ca.start[seg]
        vals = np.where(has[:, None], _take_rows(ca.cols["cum"], np.maximum(i - 1, 0)), 0.0)  # (n * N_CTR, 2)
        return vals.reshape(n, N_CTR, 2).transpose(2, 1, 0).reshape(2 * N_CTR, n)

    def _cursor(self, key: tuple[Any, ...], x: float) -> tuple[I64, F64, F64, B]:
        """For every machine, at x: the position and `_row_data` of the last state row at or before x,
        and (machines * N_CTR, 2) counter values before x.

        A cursor per shared instant moves forward with it (a few rows per tick, so a tick needs no binary
        search) and keeps the rows it read: only machines whose cursor moved, or whose rows were cut
        (`_clamp_cursors`), are read again. First use and far moves fall back to a binary search.
        """
        sa, ca = self._sa, self._ca
        n_m = self.cp.n
        cur = self._cursors.get(key)
        if cur is not None and x == cur.x and cur.epoch == self._epoch and not cur.s_dirty.any():
            # nothing was derived since and the instant did not move: nothing can have moved
            return sa.start + cur.s_idx, cur.s_rows, cur.c_vals, np.zeros(n_m, np.bool_)
        if cur is None or x < cur.x:
            ms = np.arange(n_m, dtype=np.int64)
            used = np.flatnonzero(ca.len > 0)
            s_idx = sa.search(ms, np.full(n_m, x), "right") - 1 - sa.start
            c_idx = np.zeros(n_m * N_CTR, np.int64)
            c_idx[used] = ca.search(used, np.full(len(used), x), "left") - ca.start[used]
            cur = _Cursor(x, s_idx, self._row_data(sa.start + s_idx, ms), c_idx, np.zeros((n_m * N_CTR, 2)),
                          np.zeros(n_m, np.bool_), np.zeros(n_m * N_CTR, np.bool_))
            c_moved = used
            s_moved = ms
        else:
            lim = sa.len - 1
            s_idx, c_idx = cur.s_idx, cur.c_idx
            if cur.s_next is None or cur.c_next is None or cur.epoch != self._epoch:
                self._next_times(cur)
            assert cur.s_next is not None and cur.c_next is not None
            s_moved = np.flatnonzero(cur.s_dirty | (cur.s_next <= x))
            cand = s_moved[cur.s_next[s_moved] <= x]
            for _ in range(4):
                if not len(cand):
                    break
                s_idx[cand] += 1
                nxt = np.minimum(s_idx[cand] + 1, lim[cand])
                cand = cand[(s_idx[cand] < lim[cand]) & (sa.t[sa.start[cand] + nxt] <= x)]
            if len(cand):  # still moving after 4 rows: search
                s_idx[cand] = sa.search(cand, np.full(len(cand), x), "right") - 1 - sa.start[cand]
            if len(s_moved):
                at = s_idx[s_moved]
                cur.s_next[s_moved] = np.where(at < lim[s_moved],
                                               sa.t[sa.start[s_moved] + np.minimum(at + 1, lim[s_moved])], np.inf)
            c_moved = np.flatnonzero(cur.c_dirty | (cur.c_next < x))
            cand = c_moved[cur.c_next[c_moved] < x]
            for _ in range(4):
                if not len(cand):
                    break
                c_idx[cand] += 1
                cand = cand[ca.len[cand] > c_idx[cand]]
                cand = cand[ca.t[ca.start[cand] + c_idx[cand]] < x]
            if len(cand):
                c_idx[cand] = ca.search(cand, np.full(len(cand), x), "left") - ca.start[cand]
            if len(c_moved):
                at = c_idx[c_moved]
                clen = ca.len[c_moved]
                cur.c_next[c_moved] = np.where(at < clen, ca.t[ca.start[c_moved] + np.minimum(at, clen - 1)], np.inf)
            if len(s_moved):
                cur.s_rows[s_moved] = self._row_data(sa.start[s_moved] + s_idx[s_moved], s_moved)
            cur.x = x
        if len(c_moved):
            ci = c_moved
            has = c_idx[ci] > 0
            cur.c_vals[ci] = np.where(has[:, None], _take_rows(ca.cols["cum"], ca.start[ci] + np.maximum(c_idx[ci] - 1, 0)),
                                      0.0)
        cur.s_dirty[:] = False
        cur.c_dirty[:] = False
        cur.epoch = self._epoch
        self._cursors[key] = cur
        moved = np.zeros(n_m, np.bool_)
        moved[s_moved] = True
        moved[c_moved // N_CTR] = True
        return sa.start + cur.s_idx, cur.s_rows, cur.c_vals, moved

    def _next_times(self, cur: _Cursor) -> None:
        """The cursor's next-row times: all of them (first use), or where rows may have come or changed since
        (segments at their end, segments with cut rows)."""
        sa, ca = self._sa, self._ca
        if cur.s_next is None or cur.c_next is None:
            cur.s_next = np.full(self.cp.n, np.inf)
            cur.c_next = np.full(len(cur.c_idx), np.inf)
            sm = np.arange(self.cp.n, dtype=np.int64)
            cm = np.arange(len(cur.c_idx), dtype=np.int64)
        else:
            sm = np.flatnonzero(np.isinf(cur.s_next) | cur.s_dirty)
            cm = np.flatnonzero(np.isinf(cur.c_next) | cur.c_dirty)
        lim = sa.len[sm] - 1
        at = cur.s_idx[sm]
        cur.s_next[sm] = np.where(at < lim, sa.t[sa.start[sm] + np.clip(at + 1, 0, np.maximum(lim, 0))], np.inf)
        clen = ca.len[cm]
        at = cur.c_idx[cm]
        cur.c_next[cm] = np.where(at < clen, ca.t[ca.start[cm] + np.clip(at, 0, np.maximum(clen - 1, 0))], np.inf)

    def _clamp_cursors(self, ms: I64) -> None:
        """Rows of these machines from their current lengths on were dropped (and may come back
        different): cursors past the cut move back to it and walk forward again."""
        sa, ca = self._sa, self._ca
        cs = (ms[:, None] * N_CTR + np.arange(N_CTR)).ravel()
        for cur in self._cursors.values():
            cur.s_idx[ms] = np.minimum(cur.s_idx[ms], sa.len[ms] - 1)
            cur.c_idx[cs] = np.minimum(cur.c_idx[cs], ca.len[cs])
            cur.s_dirty[ms] = True
            cur.c_dirty[cs] = True

    def _point(self, tl: Timeline, key: tuple[Any, ...]) -> F64:
        """(machines, 7 + 1 + 2 * N_CTR): class seconds, stops and counters before one shared instant.

        A fixed instant (a window start, or the end of a closed window) keeps its values between ticks:
        only machines whose rows at or before it changed, or whose open end changed, are computed again.
        """
        n_m = self.cp.n
        if key[0] == "now":
            x = tl.now
        elif key[0] == "roll":
            x = tl.now - float(key[1])
        else:
            x = float(key[1])
        x = min(max(x, tl.origin), tl.now)
        if x >= tl.now:  # everything derived is before now: the ends of the tables
            pos = tl.last_pos
            out = np.empty((n_m, N_POINT))
            self._point_rows(tl, x, None, pos, self._row_data(pos, np.arange(n_m, dtype=np.int64)), self._cend, out)
            return out
        pos, rows, cvals, moved = self._cursor(key, x)
        cur = self._cursors[key]
        if key[0] != "at" or cur.vals is None or cur.tail_id != tl.tail_id - 1:
            out = np.empty((n_m, N_POINT))
            self._point_rows(tl, x, None, pos, rows, cvals, out)
        else:
            # the last tick's values, updated in place where they can have changed (callers only read them)
            out = cur.vals
            need = np.flatnonzero(moved | tl.tail_changed)
            if len(need):
                sub = np.empty((len(need), out.shape[1]))
                self._point_rows(tl, x, need, pos[need], rows[need],
                                 cvals.reshape(n_m, N_CTR, 2)[need].reshape(-1, 2), sub)
                out[need] = sub
        if key[0] == "at":
            cur.vals = out
            cur.tail_id = tl.tail_id
        return out

    def _point_rows(self, tl: Timeline, x: float, idx: I64 | None, pos: I64, rows: F64, cvals: F64,
                    out: F64) -> None:
        """`_state_at` and `_counts_at` at one shared x for the machines idx (None: all, in order), written
        with whole columns into out (len(idx), columns)."""
        n = len(pos)
        ms = np.arange(n, dtype=np.int64) if idx is None else idx

        def col(a: Any) -> Any:
            return a if idx is None else a[idx]

        px = self._cal_at(ms, x, CAL_PRODUCTION)
        sec = out[:, :N_CLASSES]
        sec[:] = rows[:, :N_CLASSES]
        flat = out.reshape(-1)  # out is a C-contiguous (machines, columns) block: 1-D fancy indexing is cheaper
        base = np.arange(n, dtype=np.int64) * out.shape[1]
        t_row = rows[:, N_CLASSES + 2]
        body = pos < col(tl.last_pos)
        b = np.flatnonzero(body)
        flat[base[b] + rows[b, N_CLASSES + 3].astype(np.int64)] += px[b] - rows[b, N_CLASSES + 4]
        tl_ = np.flatnonzero(~body)
        if len(tl_) == n and idx is None and x >= tl.now:
            # every machine at now (the "now" point): every tail piece counts whole; absent pieces sit at
            # now with no length, so whole columns need no masks and no gathers
            for j in range(N_TAIL):
                flat[base + tl.tcT[j]] += tl.tpT[j + 1] - tl.tpT[j]
        elif len(tl_):
            mt = tl_ if idx is None else idx[tl_]
            pxt = px[tl_]
            for j in range(N_TAIL):
                lo, hi = tl.ttT[j][mt], tl.ttT[j + 1][mt]
                add = np.where(x > lo, np.where(x >= hi, tl.tpT[j + 1][mt], pxt) - tl.tpT[j][mt], 0.0)
                flat[base[tl_] + tl.tcT[j][mt]] += add
        f = np.flatnonzero(col(tl.fix) & (x > col(tl.run_t)))
        if len(f):
            mf = f if idx is None else idx[f]
            amt = np.where(x >= tl.ttT[0][mf], tl.fix_p_end[mf], px[f]) - tl.run_p[mf]
            sec[f, UNPLANNED_STOP] -= amt
            sec[f, MICRO_STOP] += amt
        sec[:, UNSCHEDULED] += self._cal_at(ms, x, 0)
        sec[:, PLANNED_EXCLUDED] += self._cal_at(ms, x, CAL_EXCLUDED)
        stops = rows[:, N_CLASSES] + ((rows[:, N_CLASSES + 1] == 1) & (t_row < x))
        ts = np.flatnonzero(col(tl.has_tail_stop))
        if len(ts):
            stops[ts] += (tl.tail_stops[ts if idx is None else idx[ts]] < x).sum(axis=1)
        out[:, fx.STOPS] = stops
        out[:, _POINT_CTR_COLS] = cvals.reshape(n, N_CTR * 2)[:, _POINT_CTR_VALS]

    # ------------------------------------------------------------------ windows

    def _calendar_spans(self, ci: int, now: float, horizon: float) -> list[tuple[int, float, float, str | None]]:
        """(kind: 0 shift / 1 day / 2 hour, start, full end, shift name) of the calendar's hours, days and
        shifts near now; expanded from the calendar once per few hours, not per tick."""
        cname = self.cp.calendar_names[ci]
        key = (ci, cname)
        cached = self._win_cache.get(key)
        if cached is None or not (cached[0] <= horizon - 2 * DAY and now + 1.0 <= cached[1]):
            cal = self.plant.calendars[cname]
            lo, hi = horizon - 3 * DAY, now + 6 * 3600.0
            spans: list[tuple[int, float, float, str | None]] = [
                (0, s.start, s.end, s.name) for s in shift_instances(cal, lo, hi)]
            for unit, kk in (("day", 1), ("hour", 2)):
                f = local_floor(lo, cal.timezone, unit)
                while f < hi:
                    nxt = local_next(f, cal.timezone, unit)
                    spans.append((kk, f, nxt, None))
                    f = nxt
            cached = (lo + DAY, hi, spans)
            self._win_cache[key] = cached
        return cached[2]

    def windows(self, now: float) -> WindowSet:
        """Rolling windows ending at now, plus every local hour, shift and day touching the lateness
        horizon (so late data re-emits the windows it changes, and a closed window gets its final value)."""
        cp = self.cp
        n_m = cp.n
        machines = np.arange(n_m, dtype=np.int64)
        n_roll = len(self.plant.rolling_windows)
        kinds: list[str] = [w.name for w in self.plant.rolling_windows] + list(CALENDAR_WINDOWS)
        points: dict[tuple[Any, ...], int] = {("now",): 0}

        def pt(key: tuple[Any, ...]) -> int:
            return points.setdefault(key, len(points))

        roll_pts = np.array([pt(("roll", float(w.seconds))) for w in self.plant.rolling_windows], np.int64)
        blocks = [(k * n_m, (k + 1) * n_m, int(roll_pts[k]), 0) for k in range(n_roll)]
        row = n_roll * n_m
        wm: list[I64] = [np.tile(machines, n_roll)]
        wk: list[I64] = [np.repeat(np.arange(n_roll, dtype=np.int64), n_m)]
        wa: list[F64] = [np.repeat(np.array([now - w.seconds for w in self.plant.rolling_windows]), n_m)]
        wb: list[F64] = [np.full(n_m * n_roll, now)]
        pa: list[I64] = [np.repeat(roll_pts, n_m)]
        pb: list[I64] = [np.zeros(n_m * n_roll, np.int64)]
        wshift: list[str | None] = [None] * (n_m * n_roll)
        horizon = now - self.policies.allowed_lateness_s
        for ci in range(len(cp.calendar_names)):
            members = machines[cp.calendar_of == ci]
            if members.size == 0:
                continue
            spans = self._calendar_spans(ci, now, horizon)
            shifts = [s for s in spans if s[0] == 0 and s[1] <= now]
            recent = [s for s in shifts if s[2] > horizon]
            if not recent and shifts:
                recent = [max(shifts, key=lambda s: s[1])]
            chosen = recent + [s for s in spans if s[0] > 0 and s[1] < now and s[2] > horizon]
            for kk, a, b, name in chosen:
                wm.append(members)
                wk.append(np.full(members.size, n_roll + kk))
                wa.append(np.full(members.size, a))
                wb.append(np.full(members.size, min(b, now)))
                ia, ib = pt(("at", a)), 0 if b >= now else pt(("at", b))
                pa.append(np.full(members.size, ia))
                pb.append(np.full(members.size, ib))
                blocks.append((row, row + members.size, ia, ib) if members.size == n_m and
                              bool((members == machines).all()) else (row, row + members.size, -1, -1))
                row += members.size
                wshift.extend([name] * members.size)
        # cursors of instants no longer used are dropped
        for key in [k for k in self._cursors if k not in points]:
            del self._cursors[key]
        return WindowSet(np.concatenate(wm), np.concatenate(wk), np.concatenate(wa), np.concatenate(wb),
                         tuple(kinds), tuple(wshift), tuple(points), np.concatenate(pa), np.concatenate(pb),
                         tuple(blocks))

    def aggregate(self, tl: Timeline, w: WindowSet) -> F64:
        """Additive features (formulas.N_FEATURES) of every window row: look-ups at both ends, subtracted."""
        a = np.clip(w.start, tl.origin, tl.now)
        n = len(a)
        if w.points and w.a_pt is not None and w.b_pt is not None:
            vals = [self._point(tl, key) for key in w.points]
            stacked: F64 | None = None
            # point columns are the feature columns (plus good counters): one subtraction per block
            d = np.empty((n, N_POINT))
            for r0, r1, pa, pb in w.blocks or ((0, n, -1, -1),):
                if pa >= 0 and r1 - r0 == self.cp.n:  # every machine in order: no gather
                    np.subtract(vals[pb], vals[pa], out=d[r0:r1])
                else:
                    if stacked is None:
                        stacked = np.stack(vals)
                    mm_ = w.machine[r0:r1]
                    d[r0:r1] = stacked[w.b_pt[r0:r1], mm_] - stacked[w.a_pt[r0:r1], mm_]
            derive = bool(tl.derive_reject.any() or tl.derive_total.any())
            good = d[:, P_GOOD].copy() if derive else None
            i_good = d[:, P_IDEAL_GOOD].copy() if derive else None
            startup = d[:, P_STARTUP]  # outside x: not overwritten below
            x = d[:, : fx.N_FEATURES]
            early = np.flatnonzero(w.start < a)  # time before the engine's origin: unknown (as below)
            if len(early):
                x[early, UNKNOWN] += a[early] - w.start[early]
            x[:, fx.WINDOW] = w.end - w.start
            if good is not None and i_good is not None:
                self._derived_counts(tl, w, x, good, i_good)
            if self._seen[:, STARTUP_REJECT].any() and startup.any():  # (a column of zeros otherwise)
                self._startup_rejects(x, startup)
            return x
        b = np.clip(w.end, tl.origin, tl.now)
        mm = np.concatenate([w.machine, w.machine])
        xx = np.concatenate([a, b])
        sec, stops = self._state_at(tl, mm, xx)
        cnt = self._counts_at(mm, xx)
        c = cnt[:, n:] - cnt[:, :n]
        x = np.zeros((n, fx.N_FEATURES))
        x[:, :N_CLASSES] = sec[n:] - sec[:n]
        # Time before the engine's origin is outside its memory: it counts as unknown.
        x[:, UNKNOWN] += a - np.minimum(w.start, a)
        x[:, fx.TOTAL], x[:, fx.REJECT], x[:, fx.INPUT] = c[C_TOTAL], c[C_REJECT], c[C_INPUT]
        x[:, fx.IDEAL_TOTAL], x[:, fx.IDEAL_REJECT] = c[N_CTR + C_TOTAL], c[N_CTR + C_REJECT]
        x[:, fx.STOPS] = stops[n:] - stops[:n]
        x[:, fx.IDEAL_STARTUP] = c[N_CTR + C_STARTUP]
        x[:, fx.WINDOW] = w.end - w.start
        self._derived_counts(tl, w, x, c[C_GOOD], c[N_CTR + C_GOOD])
        if c[C_STARTUP].any():
            self._startup_rejects(x, c[C_STARTUP])
        return x

    @staticmethod
    def _derived_counts(tl: Timeline, w: WindowSet, x: F64, good: F64, i_good: F64) -> None:
        """A PLC that counts good parts instead of rejects (or instead of totals): the missing counter is
        the difference, so quality stays good / total (OEE-SEMANTICS.md section 2, "reported directly")."""
        dr = tl.derive_reject[w.machine]
        dt = tl.derive_total[w.machine]
        if dr.any():
            x[dr, fx.REJECT] = x[dr, fx.TOTAL] - good[dr]
            x[dr, fx.IDEAL_REJECT] = x[dr, fx.IDEAL_TOTAL] - i_good[dr]
        if dt.any():
            x[dt, fx.TOTAL] = good[dt] + x[dt, fx.REJECT]
            x[dt, fx.IDEAL_TOTAL] = i_good[dt] + x[dt, fx.IDEAL_REJECT]

    @staticmethod
    def _startup_rejects(x: F64, startup: F64) -> None:
        """The start-up rejects are a part of the rejects (docs/engine.md, "startup rejects"): in a window
        whose start-up count reaches or exceeds its reject count (a misconfigured PLC), every reject is a
        start-up reject; otherwise their ideal seconds are capped at the rejects'. Per machine window, before
        roll-ups add them, so production + start-up rejects is always the reject loss."""
        i_rej = x[:, fx.IDEAL_REJECT]
        x[:, fx.IDEAL_STARTUP] = np.where(startup > 0, np.where(startup >= x[:, fx.REJECT], i_rej,
                                                               np.minimum(x[:, fx.IDEAL_STARTUP], i_rej)), 0.0)

    def _pieces(self, tl: Timeline, m: I64, a: F64, b: F64, *, clip_start: bool = True
                ) -> tuple[I64, F64, F64, I8, I64]:
        """(window row, start, end, final class, reason) of the state rows overlapping each [a, b), clipped
        (state classes only: the calendar is applied by the callers)."""
        sa = self._sa
        lpos = tl.last_pos[m]
        ia = np.minimum(sa.search(m, a, "right") - 1, lpos)
        ib = np.minimum(sa.search(m, b, "left"), lpos)  # committed rows [ia, ib) end before the last row
        cnt = np.maximum(ib - ia, 0)
        rows = np.repeat(np.arange(len(a)), cnt)
        j = _ranges(ia, cnt)
        p0 = sa.t[j]
        p1 = sa.t[j + 1]
        pc = sa.cols["cls"][j].astype(np.int8)
        pr = sa.cols["reason"][j].astype(np.int64)
        mj = m[rows]
        in_run = tl.fix[mj] & (p0 >= tl.run_t[mj])
        pc = np.where(in_run, np.int8(MICRO_STOP), pc).astype(np.int8)
        tr_rows = [rows]
        t0s, t1s, cs, rs = [p0], [p1], [pc], [pr]
        idx = np.arange(len(a))
        for jj in range(N_TAIL):
            lo, hi = tl.tt[m, jj], tl.tt[m, jj + 1]
            ok = (hi > lo) & (hi > a) & (lo < b)
            tr_rows.append(idx[ok])
            t0s.append(lo[ok])
            t1s.append(hi[ok])
            cs.append(tl.tc[m[ok], jj])
            rs.append(tl.tr[m[ok], jj])
        r = np.concatenate(tr_rows)
        t0 = np.concatenate(t0s)
        if clip_start:
            t0 = np.maximum(t0, a[r])
        t1 = np.minimum(np.concatenate(t1s), b[r])
        return r, t0, t1, np.concatenate(cs).astype(np.int8), np.concatenate(rs)

    def set_reason_overrides(self, machines: Sequence[str], starts: Sequence[float], ends: Sequence[float],
                             reasons: Sequence[str]) -> None:
        """Operator-assigned reasons of downtime events (replacing any set before): stop time of the machine
        inside [start, end) is booked under the operator's reason in `downtime_by_reason_s`. Time that was
        running (or anything that is not a stop) is never changed (OEE-SEMANTICS.md section 1). The engine
        has no database: the service hands it the operator's entries."""
        idx = [self.cp.index[m] for m in machines if m in self.cp.index]
        keep = [i for i, m in enumerate(machines) if m in self.cp.index]
        names = list(self.cp.reasons)
        lookup = {n: i for i, n in enumerate(names)}
        code = []
        for i in keep:
            r = reasons[i]
            if r not in lookup:
                lookup[r] = len(names)
                names.append(r)
            code.append(lookup[r])
        m = np.array(idx, np.int64)
        a = np.array([starts[i] for i in keep], np.float64)
        e = np.array([ends[i] for i in keep], np.float64)
        order = np.lexsort((a, m))
        self._ovr = (m[order], a[order], e[order], np.array(code, np.int64)[order])
        self._ovr_names = tuple(names)
        self._timeline = None

    def downtime_by_reason(self, tl: Timeline, w: WindowSet) -> dict[int, dict[str, float]]:
        """Production seconds of planned, unplanned and micro stops per reason for every window row."""
        a = np.clip(w.start, tl.origin, tl.now)
        b = np.clip(w.end, tl.origin, tl.now)
        r, t0, t1, c, rs = self._pieces(tl, w.machine, a, b)
        stop = np.isin(c, (PLANNED_STOP, UNPLANNED_STOP, MICRO_STOP)) & (t1 > t0)
        r, t0, t1, rs = r[stop], t0[stop], t1[stop], rs[stop]
        mr = w.machine[r]
        sec = self._prod(mr, t1) - self._prod(mr, t0)
        om, oa, oe, oc = self._ovr
        if len(om) and len(r):
            # The parts of each stop piece inside an operator's event move to the operator's reason.
            span = self._span
            base = tl.origin
            k_end = om.astype(np.float64) * span + (oe - base)
            k_start = om.astype(np.float64) * span + (oa - base)
            j0 = np.searchsorted(k_end, mr.astype(np.float64) * span + (t0 - base), side="right")
            j1 = np.searchsorted(k_start, mr.astype(np.float64) * span + (t1 - base), side="left")
            cnt = np.maximum(j1 - j0, 0)
            pi = np.repeat(np.arange(len(r)), cnt)
            jj = _ranges(j0, cnt)
            lo = np.maximum(t0[pi], oa[jj])
            hi = np.minimum(t1[pi], oe[jj])
            ok = hi > lo
            pi, jj, lo, hi = pi[ok], jj[ok], lo[ok], hi[ok]
            cov = self._prod(mr[pi], hi) - self._prod(mr[pi], lo)
            sec = sec - np.bincount(pi, weights=cov, minlength=len(r))
            r = np.concatenate([r, r[pi]])
            rs = np.concatenate([rs, oc[jj]])
            sec = np.concatenate([sec, cov])
        out: dict[int, dict[str, float]] = {}
        reasons = self._ovr_names
        eps = 1e-9 if len(om) else 0.0  # what is left of a piece after an operator's part: rounding only
        for row, reason_i, s_ in zip(r.tolist(), rs.tolist(), sec.tolist(), strict=True):
            if s_ <= eps:
                continue
            d = out.setdefault(row, {})
            name = reasons[reason_i] or "unspecified"
            d[name] = d.get(name, 0.0) + s_
        return out

    # ------------------------------------------------------------------ results

    def evaluate(self, now: float) -> tuple[Timeline, WindowSet, F64]:
        tl = self.timeline(now)
        w = self.windows(now)
        return tl, w, self.aggregate(tl, w)

    def results(self, now: float, *, rollups: bool = True) -> list[KpiResult]:
        tl, w, x = self.evaluate(now)
        out = self._records(tl, w, x, entity_kind="machine", entities=[self.cp.machine_ids[i] for i in w.machine],
                            machine_rows=True)
        if rollups:
            out += self._rollups(tl, w, x)
        self.stats.counter_resets = {self.cp.machine_ids[i]: int(c) for i, c in enumerate(tl.resets) if c}
        self.stats.counter_rollovers = {self.cp.machine_ids[i]: int(c) for i, c in enumerate(tl.rollovers) if c}
        return out


    def state_intervals(self, now: float, since: float) -> list[tuple[str, float, float | None, str, str | None]]:
        """(machine, start, end or None while open, time class, reason) of every state interval that ends
        after `since`: consecutive pieces with the same class and reason (after the calendar) form one."""
        tl = self.timeline(now)
        cp = self.cp
        n_m = cp.n
        machines = np.arange(n_m, dtype=np.int64)
        s0 = np.full(n_m, min(max(since, tl.origin), now))
        # Where the interval containing `since` begins: a calendar boundary, or (in production time) the
        # start of the state row containing it -- so the start does not move from one call to the next.
        cal_cls, cal_since = self._cal_state(machines, s0)
        r, t0, _t1, _c, _r = self._pieces(tl, machines, s0, np.full(n_m, now), clip_start=False)
        first_start = np.full(n_m, np.nan)
        if len(r):
            fr = np.ones(len(r), np.bool_)
            fr[1:] = r[1:] != r[:-1]
            order = np.lexsort((t0, r))
            rr, tt0 = r[order], t0[order]
            fr = np.ones(len(rr), np.bool_)
            fr[1:] = rr[1:] != rr[:-1]
            first_start[rr[fr]] = tt0[fr]
        from_t = np.where(cal_cls == CAL_PRODUCTION, np.maximum(np.nan_to_num(first_start, nan=-np.inf), cal_since),
                          cal_since)
        from_t = np.minimum(np.maximum(from_t, tl.origin), s0)
        r, t0, t1, c, rs = self._pieces(tl, machines, from_t, np.full(n_m, now))
        keep = t1 > t0
        r, t0, t1, c, rs = r[keep], t0[keep], t1[keep], c[keep], rs[keep]
        # split at calendar boundaries, then the calendar decides outside production time
        pm_l, p0_l, p1_l, pc_l, pr_l = [], [], [], [], []
        cal_of = cp.calendar_of[r]
        for ci, cal in enumerate(self._cals):
            sel = np.flatnonzero(cal_of == ci)
            if not len(sel):
                continue
            a0, a1 = t0[sel], t1[sel]
            i0 = np.searchsorted(cal.bt, a0, side="right")
            i1 = np.searchsorted(cal.bt, a1, side="left")
            k = np.maximum(i1 - i0, 0) + 1
            rep = np.repeat(sel, k)
            offs = _ranges(np.zeros(len(sel), np.int64), k)
            bidx = np.repeat(i0, k) + offs - 1  # boundary before each sub-piece (-1 for the first)
            sub0 = np.where(offs == 0, np.repeat(a0, k), cal.bt[np.clip(bidx, 0, len(cal.bt) - 1)])
            last = offs == k.repeat(k) - 1
            sub1 = np.where(last, np.repeat(a1, k), cal.bt[np.clip(bidx + 1, 0, len(cal.bt) - 1)])
            ccls = cal.bc[cal.index(sub0)]
            fc = np.where(ccls == CAL_PRODUCTION, c[rep], np.where(ccls == CAL_EXCLUDED, PLANNED_EXCLUDED, UNSCHEDULED))
            fr_ = np.where(ccls == CAL_PRODUCTION, rs[rep], np.where(ccls == CAL_EXCLUDED, R_BREAK, R_UNSCHEDULED))
            pm_l.append(r[rep])
            p0_l.append(sub0)
            p1_l.append(sub1)
            pc_l.append(fc)
            pr_l.append(fr_)
        if not pm_l:
            return []
        pm = np.concatenate(pm_l)
        p0 = np.concatenate(p0_l)
        p1 = np.concatenate(p1_l)
        pc = np.concatenate(pc_l)
        pr = np.concatenate(pr_l)
        order = np.lexsort((p0, pm))
        pm, p0, p1, pc, pr = pm[order], p0[order], p1[order], pc[order], pr[order]
        ok = p1 > p0
        pm, p0, p1, pc, pr = pm[ok], p0[ok], p1[ok], pc[ok], pr[ok]
        n = len(pm)
        if n == 0:
            return []
        new = np.ones(n, np.bool_)
        new[1:] = (pm[1:] != pm[:-1]) | (pc[1:] != pc[:-1]) | (pr[1:] != pr[:-1])
        starts = np.flatnonzero(new)
        ends_i = np.append(starts[1:], n) - 1
        ends = p1[ends_i]
        keep = (ends > since) & (ends > p0[starts])
        out: list[tuple[str, float, float | None, str, str | None]] = []
        for i, e, mi, cl, re in zip(starts[keep].tolist(), ends[keep].tolist(), pm[starts][keep].tolist(),
                                    pc[starts][keep].tolist(), pr[starts][keep].tolist(), strict=True):
            out.append((cp.machine_ids[mi], float(p0[i]), None if e >= now else e, TIME_CLASSES[cl],
                        cp.reasons[re] or None))
        return out

    def range_results(self, now: float, machines: Sequence[str], starts: Sequence[float],
                      ends: Sequence[float], kind: str = "range") -> list[KpiResult]:
        """KPIs of explicit windows [start, end) (end <= now) of the given machines."""
        tl = self.timeline(now)
        m = np.array([self.cp.index[x] for x in machines], dtype=np.int64)
        w = WindowSet(m, np.zeros(len(m), np.int64), np.asarray(starts, np.float64), np.asarray(ends, np.float64),
                      (kind,), tuple([None] * len(m)))
        x = self.aggregate(tl, w)
        return self._records(tl, w, x, entity_kind="machine", entities=list(machines), machine_rows=True)

    def _rollups(self, tl: Timeline, w: WindowSet, x: F64) -> list[KpiResult]:
        plant = self.plant
        cp = self.cp
        out: list[KpiResult] = []
        # Group window rows by (entity, kind, start, end) and add their features.
        line_idx = cp.line_of[w.machine]
        constraint_ok = np.ones(len(w.machine), np.bool_)
        for li, line in enumerate(plant.lines):
            if line.constraint is not None:
                constraint_ok &= ~((line_idx == li) & (w.machine != cp.index[line.constraint]))
        area_names = sorted({line.area for line in plant.lines})
        area_of_line = np.array([area_names.index(line.area) for line in plant.lines], dtype=np.int64)
        groups = [
            ("line", [line.id for line in plant.lines], line_idx, constraint_ok),
            ("area", area_names, area_of_line[line_idx], constraint_ok),
            ("site", [plant.site.id], np.zeros(len(w.machine), np.int64), constraint_ok),
        ]
        for kind_name, names, ent, mask in groups:
            rows = np.flatnonzero(mask)
            keys = np.stack([ent[rows].astype(np.float64), w.kind[rows].astype(np.float64),
                             w.start[rows], w.end[rows]], axis=1)
            uniq, inv = np.unique(keys, axis=0, return_inverse=True)
            inv = inv.reshape(-1)
            sums = np.zeros((len(uniq), x.shape[1]))
            # WINDOW adds up too: a roll-up's all_time is its members' (TEEP and utilization of a site of
            # ten machines running around the clock are those of one machine, not ten times them).
            np.add.at(sums, inv, x[rows])
            first_row = np.zeros(len(uniq), np.int64)
            first_row[inv[::-1]] = rows[::-1]
            units = [{cp.units[m] for m in w.machine[rows][inv == g]} for g in range(len(uniq))]
            ws = WindowSet(w.machine[first_row], uniq[:, 1].astype(np.int64), uniq[:, 2], uniq[:, 3], w.kinds,
                           tuple(w.shift[i] for i in first_row))
            recs = self._records(tl, ws, sums, entity_kind=kind_name,
                                 entities=[names[int(e)] for e in uniq[:, 0]], machine_rows=False)
            for rec, u in zip(recs, units, strict=True):
                if len(u) > 1:
                    rec.flags.append("mixed_units")
                    rec.unit = "mixed"
            out += recs
        return out

    def _records(self, tl: Timeline, w: WindowSet, x: F64, *, entity_kind: str, entities: list[str],
                 machine_rows: bool) -> list[KpiResult]:
        pol = self.policies
        k = fx.compute(x, microstops_as=pol.microstops_as, unknown_policy=pol.unknown_policy)
        cp = self.cp
        by_reason = self.downtime_by_reason(tl, w) if machine_rows else {}
        speed_rows = None
        if machine_rows:
            ws = WindowSet(np.arange(cp.n, dtype=np.int64), np.zeros(cp.n, np.int64),
                           np.full(cp.n, tl.now - SPEED_WINDOW_S), np.full(cp.n, tl.now), ("speed",))
            xs = self.aggregate(tl, ws)
            run = xs[:, RUNNING] + xs[:, MICRO_STOP]
            speed_rows = np.where((tl.cur_cls == RUNNING) & (run > 0), xs[:, fx.TOTAL] / np.maximum(run, 1e-12) * 3600,
                                  0.0)

        def opt(a: F64, i: int) -> float | None:
            val = float(a[i])
            return None if math.isnan(val) else val

        out: list[KpiResult] = []
        for i in range(len(w.machine)):
            m = int(w.machine[i])
            flags: list[str] = []
            perf = opt(k.performance, i)
            if perf is not None and perf > 1.0 + 1e-9:
                flags.append("performance_over_100")
            rec = KpiResult(
                entity=entities[i], entity_kind=entity_kind, window=w.kinds[int(w.kind[i])],
                start=float(w.start[i]), end=float(w.end[i]),
                seconds={name: float(x[i, c]) for c, name in enumerate(TIME_CLASSES)},
                total=float(x[i, fx.TOTAL]), good=float(k.good[i]), reject=float(x[i, fx.REJECT]),
                unit=cp.units[m], availability=opt(k.availability, i), performance=perf,
                quality=opt(k.quality, i), oee=opt(k.oee, i), teep=opt(k.teep, i),
                utilization=opt(k.utilization, i), coverage=opt(k.coverage, i), ppt_s=float(k.ppt[i]),
                run_time_s=float(k.run_time[i]), net_run_time_s=float(k.net_run_time[i]),
                fully_productive_s=float(k.fully_productive[i]), stops=int(x[i, fx.STOPS]),
                mtbf_s=opt(k.mtbf, i), mttr_s=opt(k.mttr, i),
                six_big_losses_s={n: float(k.losses[i, j]) for j, n in enumerate(SIX_BIG_LOSSES)},
                downtime_by_reason_s=by_reason.get(i, {}), flags=flags, config_hash=cp.config_hash,
                shift=w.shift[i] if w.shift else None,
            )
            if machine_rows:
                if cp.is_rate[m]:
                    rec.input_total = float(x[i, fx.INPUT])
                    rec.weight_yield = opt(k.weight_yield, i)
                rec.state = TIME_CLASSES[int(tl.cur_cls[m])]
                rec.reason = cp.reasons[int(tl.cur_reason[m])] or None
                rec.state_since = float(tl.cur_since[m])
                rec.product = cp.product_names[m][int(tl.cur_product[m])]
                assert speed_rows is not None
                rec.speed_per_h = float(speed_rows[m])
                rec.ideal_speed_per_h = 3600.0 / float(cp.sec_per_unit[m, int(tl.cur_product[m])])
            out.append(rec)
        return out



def _to_float(val: str) -> float:
    try:
        return float(val)
    except ValueError:
        return float("nan")
