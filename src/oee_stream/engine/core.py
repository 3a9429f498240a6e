"""The vectorized OEE engine: samples in, KPIs per machine and window out. Pure: no I/O, no clock.

Data layout (docs/engine.md):
- a sample log of columnar NumPy arrays (machine, signal, ts, value, quality) kept sorted by
  (machine, signal, ts) and deduplicated; new batches are appended to a pending buffer and merged with
  one stable sort of two sorted runs (timsort merges them in linear time);
- at evaluation the log is turned, for all machines at once, into a state timeline (one row per state
  change, plus calendar boundaries, plus a terminal row at `now`) with cumulative seconds per time class,
  and a count table (one row per counter increment) with cumulative counts and ideal seconds;
- a window [a, b) of machine m is then two `searchsorted` look-ups into each table: C(b) - C(a).

Nothing here loops per sample or per machine; the few Python loops run per calendar or per result
record when results are formatted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from oee_stream.bus import Sample
from oee_stream.config import Plant
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
    INPUT,
    MICRO_STOP,
    N_CLASSES,
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
I8 = npt.NDArray[np.int8]
B = npt.NDArray[np.bool_]

DAY = 86400.0
RESUME = -1.0  # value of a GAP row that ends a gap (see Engine.connector_status)
SPEED_WINDOW_S = 300.0

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


@dataclass(frozen=True)
class Timeline:
    """The derived state timeline and count table at one `now`, for all machines."""

    now: float
    # state rows sorted by (machine, t)
    sm: I64
    st: F64
    scls: I8
    sreason: I64
    skey: F64
    scum: F64  # (7, N) seconds per class before each row
    stop_key: F64  # keys of the starts of counted (non-micro) unplanned stops, sorted
    # count rows sorted by (machine, t)
    ckey: F64
    ccum: F64  # (5, N + 1): total, reject, input, ideal_total, ideal_reject before each row
    span: float
    origin: float
    # current state per machine
    cur_cls: I64
    cur_reason: I64
    cur_since: F64
    cur_product: I64
    resets: I64
    rollovers: I64


def _sorted_search(table: F64, keys: F64, order: I64, side: Literal["left", "right"]) -> I64:
    out = np.empty(len(keys), np.int64)
    out[order] = np.searchsorted(table, keys[order], side=side)
    return out


def _key(m: I64, t: F64 | float, origin: float, span: float) -> F64:
    return m.astype(np.float64) * span + (np.asarray(t, dtype=np.float64) - origin)


class Engine:
    """OEE for every machine of a plant, vectorized across machines."""

    def __init__(self, plant: Plant, *, origin: float | None = None, retention_s: float | None = None) -> None:
        self.cp: CompiledPlant = compile_plant(plant)
        self.plant = plant
        self.policies = plant.policies
        n = self.cp.n
        max_window = max([w.seconds for w in plant.rolling_windows] + [DAY + 3600.0])
        self.retention_s = retention_s or (max_window + self.policies.allowed_lateness_s + DAY)
        self.origin: float | None = origin
        self._m = np.empty(0, np.int64)
        self._s = np.empty(0, np.int8)
        self._t = np.empty(0, np.float64)
        self._v = np.empty(0, np.float64)
        self._q = np.empty(0, np.int8)
        self._pending: list[tuple[I64, I8, F64, F64, I8]] = []
        self.watermark = np.full(n, -np.inf)
        self.offline_since = np.full(n, np.nan)
        self._sessions: dict[str, str] = {}
        self.stats = EngineStats()
        self._timeline: Timeline | None = None

    # ------------------------------------------------------------------ ingest

    def ingest(self, samples: Sequence[Sample], now: float) -> IngestReport:
        """Map bus samples to arrays (machine ids, product names) and ingest them."""
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
        report = self.ingest_arrays(m, s, t, v, q, now=now)
        if pre_reject:
            rejected = dict(report.rejected)
            rejected.update(pre_reject)
            report.rejected = sorted(rejected.items())
        return report

    def ingest_arrays(self, m: I64, s: I8, t: F64, v: F64, q: I8, *, now: float) -> IngestReport:
        """Validate and append a columnar batch. Product values are product indices."""
        n = len(t)
        reason = np.zeros(n, np.int8)
        reason[(m < 0) | (m >= self.cp.n)] = 1
        reason[(reason == 0) & (s < 0)] = 2
        reason[(reason == 0) & (t > now + self.policies.max_clock_skew_s)] = 3
        good = q == GOOD
        reason[(reason == 0) & (~np.isfinite(t) | (good & ~np.isfinite(v)))] = 4
        counter = (s == TOTAL) | (s == REJECT) | (s == INPUT)
        reason[(reason == 0) & counter & good & (v < 0)] = 5
        reason[(reason == 0) & (s == STATE) & good & (v != np.round(v))] = 6
        modulus = self.cp.counter_modulus[np.clip(m, 0, self.cp.n - 1)]
        reason[(reason == 0) & counter & good & (modulus > 0) & (v >= modulus)] = 8
        ok = reason == 0
        if self.origin is None and ok.any():
            self.origin = math.floor(float(t[ok].min()) / 3600.0) * 3600.0 - self.retention_s
        # Late: older than the machine's newest sample by more than allowed_lateness_s.
        # Lateness is measured against what was seen before this batch: a batch (a spool being replayed,
        # a recorded log) is in time order within itself.
        mo = m[ok]
        lag = np.zeros(n)
        lag[ok] = self.watermark[mo] - t[ok]
        late = ok & (lag > self.policies.allowed_lateness_s)
        keep = ok & ~late
        np.maximum.at(self.watermark, m[keep], t[keep])
        if keep.any():
            self._pending.append((m[keep], s[keep], t[keep], v[keep], q[keep]))
            self._timeline = None
        rep = IngestReport(accepted=int(keep.sum()), late_dropped=int(late.sum()))
        bad_idx = np.flatnonzero(~ok)
        rep.rejected = [(int(i), REJECT_REASONS[reason[i]]) for i in bad_idx]
        late_idx = np.flatnonzero(late)
        rep.late = [(int(i), float(lag[i])) for i in late_idx]
        self.stats.accepted += rep.accepted
        self.stats.late_dropped += rep.late_dropped
        self.stats.rejected += len(rep.rejected)
        return rep

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
        if state == "offline":
            self.offline_since[idx] = np.where(np.isnan(self.offline_since[idx]), ts, self.offline_since[idx])
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
            self._timeline = None

    def _merge(self, now: float) -> None:
        if self._pending:
            parts = [(self._m, self._s, self._t, self._v, self._q), *self._pending]
            self._pending = []
            m = np.concatenate([p[0] for p in parts])
            s = np.concatenate([p[1] for p in parts])
            t = np.concatenate([p[2] for p in parts])
            v = np.concatenate([p[3] for p in parts])
            q = np.concatenate([p[4] for p in parts])
            # One stable sort on a composite key: the log and each batch are sorted runs, which timsort
            # merges in close to linear time (a three-key lexsort was the slowest step).
            base = self.origin if self.origin is not None else float(t.min())
            span = float(t.max() - base) + 1.0
            order = np.argsort((m * 8 + s).astype(np.float64) * span + (t - base), kind="stable")
            m, s, t, v, q = m[order], s[order], t[order], v[order], q[order]
            same = np.zeros(len(t), np.bool_)
            if len(t) > 1:
                # An exact duplicate (same machine, signal, source time, value, quality) counts once.
                same[1:] = (
                    (m[1:] == m[:-1]) & (s[1:] == s[:-1]) & (t[1:] == t[:-1])
                    & ((v[1:] == v[:-1]) | (np.isnan(v[1:]) & np.isnan(v[:-1]))) & (q[1:] == q[:-1])
                )
            self.stats.duplicates += int(same.sum())
            keep = ~same
            self._m, self._s, self._t, self._v, self._q = m[keep], s[keep], t[keep], v[keep], q[keep]
        self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget samples older than the retention horizon, keeping each series' last one as its anchor."""
        if self.origin is None or now - self.retention_s - DAY < self.origin:
            return
        new_origin = math.floor((now - self.retention_s) / 3600.0) * 3600.0
        m, s, t = self._m, self._s, self._t
        n = len(t)
        if n == 0:
            self.origin = new_origin
            return
        last_of_series = np.ones(n, np.bool_)
        last_of_series[:-1] = (m[1:] != m[:-1]) | (s[1:] != s[:-1]) | (t[1:] >= new_origin)
        keep = (t >= new_origin) | last_of_series
        anchor = keep & (t < new_origin)
        self._t = np.where(anchor, new_origin, t)[keep]
        self._m, self._s, self._v, self._q = m[keep], s[keep], self._v[keep], self._q[keep]
        self.origin = new_origin

    # ------------------------------------------------------------------ derive

    def timeline(self, now: float) -> Timeline:
        if self._timeline is not None and self._timeline.now == now:
            return self._timeline
        if self.origin is None:
            self.origin = math.floor(now / 3600.0) * 3600.0 - self.retention_s
        self._merge(now)
        tl = self._derive(now)
        self._timeline = tl
        return tl

    def _derive(self, now: float) -> Timeline:
        cp = self.cp
        n_m = cp.n
        origin = self.origin if self.origin is not None else now - self.retention_s
        span = (now - origin) + 1.0
        lm, ls, lt, lv, lq = self._m, self._s, self._t, self._v, self._q
        past = lt < now

        # --- counts
        ctr = past & ((ls == TOTAL) | (ls == REJECT) | (ls == INPUT)) & (lq == GOOD)
        cm, cs, ct, cv = lm[ctr], ls[ctr], lt[ctr], lv[ctr]
        new_series = np.ones(len(ct), np.bool_)
        new_series[1:] = (cm[1:] != cm[:-1]) | (cs[1:] != cs[:-1])
        prev = np.empty_like(cv)
        prev[1:] = cv[:-1]
        prev[:1] = 0.0
        d = np.where(new_series, 0.0, cv - prev)
        mod = cp.counter_modulus[cm]
        neg = (d < 0) & ~new_series
        roll = neg & (mod > 0) & (prev >= 0.9 * mod)
        reset = neg & ~roll
        d = np.where(roll, d + mod, np.where(reset, cv, d))
        resets = np.bincount(cm[reset], minlength=n_m).astype(np.int64)
        rolls = np.bincount(cm[roll], minlength=n_m).astype(np.int64)
        # --- state rows from samples
        run_bit = cp.uses_run_bit[lm]
        sel = past & (((ls == STATE) & ~run_bit) | ((ls == RUN) & run_bit) | (ls == GAP))
        sm, st, sv, sq, ss = lm[sel], lt[sel], lv[sel], lq[sel], ls[sel]
        n_codes = cp.state_class.shape[1]
        code = np.where(np.isfinite(sv), sv, -1).astype(np.int64)
        in_range = (code >= 0) & (code < n_codes)
        code_c = np.clip(code, 0, n_codes - 1)
        cls = np.full(len(st), UNKNOWN, np.int8)
        reason = np.full(len(st), R_UNMAPPED, np.int64)
        is_state = ss == STATE
        mapped = is_state & in_range & cp.state_mapped[sm, code_c]
        cls[mapped] = cp.state_class[sm[mapped], code_c[mapped]]
        reason[mapped] = cp.state_reason[sm[mapped], code_c[mapped]]
        is_run = ss == RUN
        cls[is_run] = np.where(sv[is_run] != 0, RUNNING, UNPLANNED_STOP)
        reason[is_run] = np.where(sv[is_run] != 0, R_NONE, R_STOPPED)
        bad = (is_state | is_run) & (sq != GOOD)
        cls[bad] = UNKNOWN
        reason[bad] = R_BAD
        gap = ss == GAP
        cls[gap] = UNKNOWN
        reason[gap] = np.where(sv[gap] == RESUME, R_OFFLINE, sv[gap]).astype(np.int64)
        # 1: a real state sample, 2: a RESUME row (takes the class of the latest real sample before it)
        srcflag = np.where(is_state | is_run, 1, np.where(gap & (sv == RESUME), 2, 0)).astype(np.int8)

        # --- synthetic rows: origin (no data yet), offline/stale tails, terminal row at now
        machines = np.arange(n_m, dtype=np.int64)
        extra_m = [machines]
        extra_t = [np.full(n_m, origin)]
        extra_c = [np.full(n_m, UNKNOWN, np.int8)]
        extra_r = [np.full(n_m, R_NO_DATA, np.int64)]
        extra_p = [np.zeros(n_m, np.int8)]
        off = np.isfinite(self.offline_since) & (self.offline_since < now)
        if off.any():
            extra_m.append(machines[off])
            extra_t.append(self.offline_since[off])
            extra_c.append(np.full(int(off.sum()), UNKNOWN, np.int8))
            extra_r.append(np.full(int(off.sum()), R_OFFLINE, np.int64))
            extra_p.append(np.full(int(off.sum()), 2, np.int8))
        # Machines without a state signal: running from each count, stopped once no count came for
        # no_count_stop_after_s (the stop starts at that moment, not at the last count).
        cnt = (cs == TOTAL) & (d > 0) & cp.uses_counts[cm]
        if cnt.any():
            km, kt = cm[cnt], ct[cnt]
            gap_after = cp.no_count_stop_after[km]
            nxt_c = np.empty_like(kt)
            nxt_c[:-1] = kt[1:]
            last_c = np.ones(len(kt), np.bool_)
            last_c[:-1] = km[1:] != km[:-1]
            nxt_c[last_c] = now
            stops_at = (nxt_c - kt) > gap_after
            extra_m += [km, km[stops_at]]
            extra_t += [kt, kt[stops_at] + gap_after[stops_at]]
            extra_c += [np.full(len(kt), RUNNING, np.int8), np.full(int(stops_at.sum()), UNPLANNED_STOP, np.int8)]
            extra_r += [np.full(len(kt), R_NONE, np.int64), np.full(int(stops_at.sum()), R_NO_COUNT, np.int64)]
            extra_p += [np.ones(len(kt), np.int8), np.ones(int(stops_at.sum()), np.int8)]
        stale_after = self.policies.stale_after_s
        if stale_after is not None and len(lt):
            last_seen = np.full(n_m, -np.inf)
            np.maximum.at(last_seen, lm[past], lt[past])
            stale = np.isfinite(last_seen) & (last_seen + stale_after < now)
            if stale.any():
                extra_m.append(machines[stale])
                extra_t.append(last_seen[stale] + stale_after)
                extra_c.append(np.full(int(stale.sum()), UNKNOWN, np.int8))
                extra_r.append(np.full(int(stale.sum()), R_STALE, np.int64))
                extra_p.append(np.full(int(stale.sum()), 2, np.int8))
        extra_m.append(machines)
        extra_t.append(np.full(n_m, now))
        extra_c.append(np.full(n_m, UNKNOWN, np.int8))
        extra_r.append(np.full(n_m, R_NONE, np.int64))
        extra_p.append(np.full(n_m, 3, np.int8))
        # Concatenated in tie-break order (origin, samples, derived rows, tails, terminal), so a stable
        # sort on (machine, time) keeps that order among rows at the same instant.
        rm = np.concatenate([extra_m[0], sm, *extra_m[1:]])
        rt = np.concatenate([extra_t[0], st, *extra_t[1:]])
        rc = np.concatenate([extra_c[0], cls, *extra_c[1:]])
        rr = np.concatenate([extra_r[0], reason, *extra_r[1:]])
        rp = np.concatenate([extra_p[0], np.ones(len(st), np.int8), *extra_p[1:]])
        rf = np.concatenate([np.zeros(len(extra_t[0]), np.int8), srcflag,
                             np.zeros(sum(len(x) for x in extra_t[1:]), np.int8)])
        order = np.argsort(_key(rm, rt, origin, span), kind="stable")
        rm, rt, rc, rr, rp, rf = rm[order], rt[order], rc[order], rr[order], rp[order], rf[order]
        resume = rf == 2
        if resume.any():
            rpos = np.arange(len(rt))
            last_real = np.maximum.accumulate(np.where(rf == 1, rpos, -1))
            ok = resume & (last_real >= 0) & (rm[np.maximum(last_real, 0)] == rm)
            rc = np.where(ok, rc[np.maximum(last_real, 0)], rc).astype(np.int8)
            rr = np.where(ok, rr[np.maximum(last_real, 0)], rr)
        terminal = rp == 3

        # --- micro stops: a run of consecutive unplanned rows shorter than the threshold
        nxt_t = np.empty_like(rt)
        nxt_t[:-1] = rt[1:]
        nxt_t[-1] = now
        dur = np.where(terminal, 0.0, nxt_t - rt)
        unpl = rc == UNPLANNED_STOP
        prev_unpl = np.zeros(len(rc), np.bool_)
        prev_unpl[1:] = unpl[:-1] & (rm[1:] == rm[:-1])
        run_start = unpl & ~prev_unpl
        run_id = np.cumsum(run_start) - 1
        n_runs = int(run_start.sum())
        run_dur = np.bincount(run_id[unpl], weights=dur[unpl], minlength=n_runs) if n_runs else np.zeros(0)
        run_first = np.flatnonzero(run_start)
        run_micro = run_dur < cp.microstop_threshold[rm[run_first]]
        micro_rows = unpl & run_micro[np.clip(run_id, 0, max(n_runs - 1, 0))] if n_runs else unpl & False
        rc = np.where(micro_rows, np.int8(MICRO_STOP), rc).astype(np.int8)
        stop_start_row = run_start & ~micro_rows

        # --- calendar overlay: calendar boundaries become rows that carry the machine's state forward
        cal_m, cal_t, cal_c = [], [], []
        for ci, cname in enumerate(cp.calendar_names):
            members = machines[cp.calendar_of == ci]
            if members.size == 0:
                continue
            bt, bc = calendar_boundaries(self.plant.calendars[cname], origin, now)
            cal_m.append(np.repeat(members, len(bt)))
            cal_t.append(np.tile(bt, members.size))
            cal_c.append(np.tile(bc, members.size))
        k_state = len(rt)
        n_cal = sum(len(x) for x in cal_t)
        # Calendar rows first: at equal times a calendar boundary sorts before a state change, so a stop
        # that starts exactly when a shift starts is seen inside the shift.
        am = np.concatenate([*cal_m, rm])
        at = np.concatenate([*cal_t, rt])
        kind = np.concatenate([np.zeros(n_cal, np.int8), np.where(terminal, 2, 1).astype(np.int8)])
        src = np.concatenate([np.full(n_cal, -1), np.arange(k_state)])
        calv = np.concatenate([*cal_c, np.full(k_state, -1, np.int8)]) if cal_c else np.full(k_state, -1, np.int8)
        order = np.argsort(_key(am, at, origin, span), kind="stable")
        am, at, kind, src, calv = am[order], at[order], kind[order], src[order], calv[order]
        pos = np.arange(len(at))
        last_state = np.maximum.accumulate(np.where(src >= 0, pos, 0))
        state_row = src[last_state]
        last_cal = np.maximum.accumulate(np.where(calv >= 0, pos, 0))
        cal_now = np.where(calv[last_cal] >= 0, calv[last_cal], CAL_PRODUCTION)
        # Rows of one machine before its first calendar row (only the origin row, zero long) keep state.
        first_of_m = np.ones(len(am), np.bool_)
        first_of_m[1:] = am[1:] != am[:-1]
        seen_cal = np.maximum.accumulate(np.where(first_of_m, pos, 0)) <= last_cal
        cal_now = np.where(seen_cal, cal_now, CAL_PRODUCTION)
        fcls = np.where(cal_now == CAL_PRODUCTION, rc[state_row],
                        np.where(cal_now == CAL_EXCLUDED, PLANNED_EXCLUDED, UNSCHEDULED)).astype(np.int8)
        freason = np.where(cal_now == CAL_PRODUCTION, rr[state_row],
                           np.where(cal_now == CAL_EXCLUDED, R_BREAK, R_UNSCHEDULED))
        is_stop_start = np.zeros(len(am), np.bool_)
        is_stop_start[src >= 0] = stop_start_row[src[src >= 0]]
        is_stop_start &= fcls == UNPLANNED_STOP
        a_term = kind == 2
        nxt = np.empty_like(at)
        nxt[:-1] = at[1:]
        nxt[-1] = now
        adur = np.where(a_term, 0.0, nxt - at)
        # (classes, rows): a cumsum along contiguous rows is several times faster than down columns.
        contrib = np.zeros((N_CLASSES, len(at)))
        contrib[fcls, pos] = adur
        scum = np.cumsum(contrib, axis=1) - contrib
        skey = _key(am, at, origin, span)

        # --- current state per machine: the row before the terminal row, and since when it holds
        term_idx = np.flatnonzero(a_term)
        cur = term_idx - 1
        changed = np.ones(len(am), np.bool_)
        changed[1:] = (am[1:] != am[:-1]) | (fcls[1:] != fcls[:-1]) | (freason[1:] != freason[:-1])
        seg_start = np.maximum.accumulate(np.where(changed, pos, 0))
        cur_cls = fcls[cur].astype(np.int64)
        cur_reason = freason[cur].astype(np.int64)
        cur_since = at[seg_start[cur]]

        # The product active at each count is the last product sample strictly before it: a counter
        # value read at the moment of a product change still counts parts of the old product.
        psel = past & (ls == PRODUCT) & (lq == GOOD) & np.isfinite(lv)
        pm, pt, pv = lm[psel], lt[psel], lv[psel]
        pkey = _key(pm, pt, origin, span)
        ckey_raw = _key(cm, ct, origin, span)
        pi = np.searchsorted(pkey, ckey_raw, side="left") - 1
        has_p = (pi >= 0) & (pm[np.clip(pi, 0, max(len(pm) - 1, 0))] == cm) if len(pm) else np.zeros(len(cm), bool)
        prod = np.where(has_p, pv[np.clip(pi, 0, max(len(pm) - 1, 0))] if len(pm) else 0,
                        cp.default_product[cm]).astype(np.int64)
        spu = cp.sec_per_unit[cm, prod]
        corder = np.argsort(ckey_raw, kind="stable")
        ckey = ckey_raw[corder]
        d_o, cs_o, spu_o = d[corder], cs[corder], spu[corder]
        vals = np.zeros((5, len(ct)))
        vals[0] = np.where(cs_o == TOTAL, d_o, 0.0)
        vals[1] = np.where(cs_o == REJECT, d_o, 0.0)
        vals[2] = np.where(cs_o == INPUT, d_o, 0.0)
        vals[3] = vals[0] * spu_o
        vals[4] = vals[1] * spu_o
        ccum = np.zeros((5, len(ct) + 1))
        np.cumsum(vals, axis=1, out=ccum[:, 1:])
        # current product
        last_p = np.searchsorted(pkey, _key(machines, now, origin, span), side="left") - 1
        okp = (last_p >= 0) & (pm[np.clip(last_p, 0, max(len(pm) - 1, 0))] == machines) if len(pm) else \
            np.zeros(n_m, bool)
        cur_product = np.where(okp, pv[np.clip(last_p, 0, max(len(pm) - 1, 0))] if len(pm) else 0,
                               cp.default_product).astype(np.int64)
        return Timeline(
            now=now, sm=am, st=at, scls=fcls, sreason=freason, skey=skey, scum=scum,
            stop_key=np.sort(skey[is_stop_start]), ckey=ckey, ccum=ccum, span=span, origin=origin,
            cur_cls=cur_cls, cur_reason=cur_reason, cur_since=cur_since, cur_product=cur_product,
            resets=resets, rollovers=rolls,
        )

    # ------------------------------------------------------------------ windows

    def windows(self, now: float) -> WindowSet:
        """Rolling windows ending at now, plus every local hour, shift and day touching the lateness
        horizon (so late data re-emits the windows it changes, and a closed window gets its final value)."""
        cp = self.cp
        n_m = cp.n
        machines = np.arange(n_m, dtype=np.int64)
        kinds: list[str] = [w.name for w in self.plant.rolling_windows] + ["shift", "day", "hour"]
        wm: list[I64] = []
        wk: list[I64] = []
        wa: list[F64] = []
        wb: list[F64] = []
        wshift: list[str | None] = []
        for k, w in enumerate(self.plant.rolling_windows):
            wm.append(machines)
            wk.append(np.full(n_m, k))
            wa.append(np.full(n_m, now - w.seconds))
            wb.append(np.full(n_m, now))
            wshift.extend([None] * n_m)
        horizon = now - self.policies.allowed_lateness_s
        k_shift, k_day, k_hour = len(kinds) - 3, len(kinds) - 2, len(kinds) - 1
        for ci, cname in enumerate(cp.calendar_names):
            members = machines[cp.calendar_of == ci]
            if members.size == 0:
                continue
            cal = self.plant.calendars[cname]
            spans: list[tuple[int, float, float, str | None]] = []
            shifts = [s for s in shift_instances(cal, now - 2 * DAY, now + 1.0) if s.start <= now]
            recent = [s for s in shifts if s.end > horizon]
            if not recent and shifts:
                recent = [shifts[-1]]
            spans += [(k_shift, s.start, min(s.end, now), s.name) for s in recent]
            for unit, kk in (("day", k_day), ("hour", k_hour)):
                f = local_floor(horizon, cal.timezone, unit)
                while f < now:
                    spans.append((kk, f, min(local_next(f, cal.timezone, unit), now), None))
                    f = local_next(f, cal.timezone, unit)
            for kk, a, b, name in spans:
                wm.append(members)
                wk.append(np.full(members.size, kk))
                wa.append(np.full(members.size, a))
                wb.append(np.full(members.size, b))
                wshift.extend([name] * members.size)
        return WindowSet(np.concatenate(wm), np.concatenate(wk), np.concatenate(wa), np.concatenate(wb),
                         tuple(kinds), tuple(wshift))

    def aggregate(self, tl: Timeline, w: WindowSet) -> F64:
        """Additive features (formulas.N_FEATURES) of every window row, two look-ups per table."""
        a = np.maximum(w.start, tl.origin)
        b = np.minimum(w.end, tl.now)
        ka = _key(w.machine, a, tl.origin, tl.span)
        kb = _key(w.machine, b, tl.origin, tl.span)
        # Binary searches with sorted needles walk the table in order: about 3x faster than random ones.
        oa, ob = np.argsort(ka, kind="stable"), np.argsort(kb, kind="stable")
        x = np.zeros((len(a), fx.N_FEATURES))
        x[:, :N_CLASSES] = self._class_seconds(tl, b, kb, ob) - self._class_seconds(tl, a, ka, oa)
        # Time before the engine's origin is outside its memory: it counts as unknown.
        x[:, UNKNOWN] += a - w.start
        ia = _sorted_search(tl.ckey, ka, oa, "left")
        ib = _sorted_search(tl.ckey, kb, ob, "left")
        c = tl.ccum[:, ib] - tl.ccum[:, ia]
        x[:, fx.TOTAL], x[:, fx.REJECT], x[:, fx.INPUT] = c[0], c[1], c[2]
        x[:, fx.IDEAL_TOTAL], x[:, fx.IDEAL_REJECT] = c[3], c[4]
        x[:, fx.STOPS] = (_sorted_search(tl.stop_key, kb, ob, "left") - _sorted_search(tl.stop_key, ka, oa, "left"))
        x[:, fx.WINDOW] = w.end - w.start
        return x

    @staticmethod
    def _class_seconds(tl: Timeline, t: F64, k: F64, order: I64) -> F64:
        i = _sorted_search(tl.skey, k, order, "right") - 1
        out = tl.scum[:, i].T.copy()
        out[np.arange(len(i)), tl.scls[i]] += t - tl.st[i]
        return out

    def downtime_by_reason(self, tl: Timeline, w: WindowSet) -> dict[int, dict[str, float]]:
        """Seconds of planned, unplanned and micro stops per reason for every window row."""
        a = np.maximum(w.start, tl.origin)
        b = np.minimum(w.end, tl.now)
        ia = np.searchsorted(tl.skey, _key(w.machine, a, tl.origin, tl.span), side="right") - 1
        ib = np.searchsorted(tl.skey, _key(w.machine, b, tl.origin, tl.span), side="left")
        counts = np.maximum(ib - ia, 0)
        rows = np.repeat(np.arange(len(a)), counts)
        offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        j = np.repeat(ia, counts) + offs
        stop = np.isin(tl.scls[j], (PLANNED_STOP, UNPLANNED_STOP, MICRO_STOP))
        rows, j = rows[stop], j[stop]
        nxt = np.minimum(tl.st[np.minimum(j + 1, len(tl.st) - 1)], b[rows])
        ov = np.maximum(nxt - np.maximum(tl.st[j], a[rows]), 0.0)
        out: dict[int, dict[str, float]] = {}
        reasons = self.cp.reasons
        for r, reason_i, sec in zip(rows.tolist(), tl.sreason[j].tolist(), ov.tolist(), strict=True):
            if sec <= 0:
                continue
            d = out.setdefault(r, {})
            name = reasons[reason_i] or "unspecified"
            d[name] = d.get(name, 0.0) + sec
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
        after `since`: consecutive timeline rows with the same class and reason form one interval."""
        tl = self.timeline(now)
        n = len(tl.st)
        if n == 0:
            return []
        last = np.ones(n, np.bool_)
        last[:-1] = tl.sm[1:] != tl.sm[:-1]
        changed = np.ones(n, np.bool_)
        changed[1:] = (tl.sm[1:] != tl.sm[:-1]) | (tl.scls[1:] != tl.scls[:-1]) | (tl.sreason[1:] != tl.sreason[:-1])
        bounds = np.flatnonzero(changed | last)
        starts = bounds[:-1][~last[bounds[:-1]]]
        nxt = bounds[np.searchsorted(bounds, starts, side="right")]
        open_ = last[nxt]
        ends = tl.st[nxt]
        keep = (ends > since) & (ends > tl.st[starts])
        cp = self.cp
        out: list[tuple[str, float, float | None, str, str | None]] = []
        for i, e, o in zip(starts[keep].tolist(), ends[keep].tolist(), open_[keep].tolist(), strict=True):
            out.append((cp.machine_ids[int(tl.sm[i])], float(tl.st[i]), None if o else e,
                        TIME_CLASSES[int(tl.scls[i])], cp.reasons[int(tl.sreason[i])] or None))
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
            np.add.at(sums, inv, x[rows])
            sums[:, fx.WINDOW] = uniq[:, 3] - uniq[:, 2]
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
