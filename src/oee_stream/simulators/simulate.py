"""The simulation proper: (scenario, seed, t0) → a deterministic, time-ordered stream of machine events.

Each machine is an independent generator with its own seeded random streams (stops, cycles, temperature),
so a machine's timeline does not change when another machine is added, and pulling the stream in chunks
of any size yields the same events. An event carries both what the servers write (`values`, `good`) and
the ground truth the ledger records (state class and reason, count increments, product, fault).
"""

from __future__ import annotations

import heapq
import math
import random
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from oee_stream.simulators.scenario import MachineScenario, Range, Scenario, StopKind

Value = int | float | str
TruthClass = Literal["running", "planned_stop", "unplanned_stop", "micro_stop", "unknown"]

COUNTER_MOD = 2**32  # the PLC counters are UInt32 (OPC UA) registers
INF = math.inf


@dataclass(frozen=True, slots=True)
class StateTruth:
    code: int | None  # None while the server reports bad status (nothing valid is visible)
    time_class: TruthClass
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class CountDelta:
    total: float  # pieces, or tonnes for rate machines; rejects are included in total
    reject: float
    product: str
    input: float = 0.0  # charged tonnes (rate machines), for weight yield


@dataclass(frozen=True, slots=True)
class SimEvent:
    ts: float  # UTC epoch seconds, the exact source time of every value written
    machine: str
    values: Mapping[str, Value]  # signal → value written: state, total, reject, product, charged, temperature
    good: bool = True
    state: StateTruth | None = None  # a new state interval starts at ts
    counts: tuple[CountDelta, ...] = ()
    product: str | None = None  # the active product from ts on
    fault: str | None = None  # counter_reset, bad_status_start, bad_status_end
    seq: int = field(default=0, compare=False)


def f32(x: float) -> float:
    """The value a float32 register can hold: what a Modbus reader decodes."""
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def _q(offset: float) -> float:
    # Millisecond times keep the OPC UA DateTime round trip exact and the ledger readable.
    return round(offset, 3)


def _draw(rng: random.Random, r: Range) -> float:
    return round(rng.uniform(r.min, r.max), 3)


def _changes(ms: MachineScenario) -> Iterator[tuple[float, str, str | None]]:
    """The product schedule as an (offset, product, changeover) stream, repeated if asked to."""
    if not ms.product_schedule:
        return
    period = ms.product_schedule_repeat_s
    rep = 0
    while True:
        base = rep * period if period is not None else 0.0
        for ch in ms.product_schedule:
            yield base + ch.at_s, ch.product, ch.changeover
        if period is None:
            return
        rep += 1


class _MachineGen:
    """Generates one machine's physical timeline; `events()` is an infinite generator."""

    def __init__(self, machine: str, ms: MachineScenario, seed: int, t0: float) -> None:
        self.machine = machine
        self.ms = ms
        self.t0 = t0
        self.rng_stops = random.Random(f"{seed}:{machine}:stops")
        self.rng_cycles = random.Random(f"{seed}:{machine}:cycles")
        self.rng_temp = random.Random(f"{seed}:{machine}:temperature")
        self.kinds: list[tuple[str, StopKind]] = [(n, k) for n, k in ms.stops.kinds.items() if k.weight > 0]
        self.seq = 0

    def _ev(
        self,
        offset: float,
        values: dict[str, Value],
        *,
        state: StateTruth | None = None,
        counts: tuple[CountDelta, ...] = (),
        product: str | None = None,
        fault: str | None = None,
    ) -> SimEvent:
        self.seq += 1
        return SimEvent(ts=self.t0 + _q(offset), machine=self.machine, values=values, state=state,
                        counts=counts, product=product, fault=fault, seq=self.seq)

    def _gap(self, after: float) -> float:
        """Offset of the next random stop: at least min_run_s of running, exponential beyond that."""
        p = self.ms.stops
        if not self.kinds:
            return INF
        extra = max(p.mean_time_between_s - p.min_run_s, 1e-3)
        return max(after, p.random_after_s) + p.min_run_s + round(self.rng_stops.expovariate(1.0 / extra), 3)

    def _pick_kind(self) -> tuple[str, StopKind]:
        weights = [k.weight for _, k in self.kinds]
        return self.rng_stops.choices(self.kinds, weights=weights, k=1)[0]

    def _cycle_time(self, product: str) -> float:
        ct = self.ms.products[product].cycle_time_s
        assert ct is not None
        j = self.ms.cycle_jitter_s
        if j > 0:
            ct = max(0.05, ct + self.rng_cycles.uniform(-j, j))
        return round(ct, 3)

    def events(self) -> Iterator[SimEvent]:
        ms = self.ms
        rate = ms.is_rate
        product = ms.first_product
        phase = 0
        faults = ms.faults
        reg_total: float = faults.total_counter_start
        reg_reject: float = faults.reject_counter_start
        reg_charged = 0.0
        temperature = ms.temperature_c
        cycle_no = 0

        def running_truth() -> StateTruth:
            return StateTruth(ms.running[phase].code, "running", None)

        def phase_end(t: float) -> float:
            d = ms.running[phase].duration_s
            return t + _draw(self.rng_stops, d) if d is not None and len(ms.running) > 1 else INF

        t = 0.0
        init: dict[str, Value] = {
            "state": ms.running[0].code, "total": reg_total, "reject": reg_reject, "product": product,
        }
        if rate:
            init.update(total=f32(reg_total), reject=f32(reg_reject), charged=0.0, temperature=f32(temperature))
        yield self._ev(t, init, state=running_truth(), product=product)

        running = True
        stop_end = INF
        earliest_stop = ms.stops.min_run_s
        next_random = self._gap(0.0)
        forced = sorted((s.at_s, s.kind) for s in ms.script)
        changes = _changes(ms)
        nxt_change = next(changes, None)
        if nxt_change is not None and nxt_change[0] == 0 and nxt_change[1] == product:
            nxt_change = next(changes, None)
        resets = sorted(faults.counter_resets_at_s)
        cycle_end = t + self._cycle_time(product) if not rate else INF
        cycle_left: float | None = None
        p_end = phase_end(t)
        tick = t + ms.update_interval_s if rate else INF
        acc_from = t  # rate machines: output accrued up to here has been written

        def accrue(now: float) -> tuple[dict[str, Value], tuple[CountDelta, ...]]:
            """Rate machines: write the output made since the last write (only while running)."""
            nonlocal reg_total, reg_reject, reg_charged, acc_from, cycle_no
            if not rate:
                return {}, ()
            if not running or now <= acc_from:
                acc_from = now
                return {}, ()
            r = ms.products[product].rate_per_h
            assert r is not None
            made = r / 3600.0 * (now - acc_from)
            acc_from = now
            cycle_no += 1
            bad = cycle_no in ms.reject_cycles or self.rng_cycles.random() < ms.reject_probability
            old_t, old_r, old_c = f32(reg_total), f32(reg_reject), f32(reg_charged)
            reg_total += made
            reg_charged += made * ms.charge_ratio
            if bad:
                reg_reject += made
            new_t, new_r, new_c = f32(reg_total), f32(reg_reject), f32(reg_charged)
            values: dict[str, Value] = {"total": new_t, "charged": new_c}
            if bad:
                values["reject"] = new_r
            return values, (CountDelta(new_t - old_t, new_r - old_r, product, new_c - old_c),)

        # The generator is infinite by design; the consumer bounds it by time.
        while True:
            if running:
                stop_at = max(next_random, earliest_stop)
                stop_kind: str | None = None
                if forced and max(forced[0][0], earliest_stop) <= stop_at:
                    stop_at = max(forced[0][0], earliest_stop)
                    stop_kind = forced[0][1]
                change_at = INF
                if nxt_change is not None:
                    # A change that fell due during a stop happens as soon as the machine runs again.
                    change_at = max(nxt_change[0], t, earliest_stop if nxt_change[2] else t)
            else:
                stop_at = change_at = INF
                stop_kind = None
            reset_at = resets[0] if resets else INF
            t_next = min(cycle_end, tick, p_end, stop_at, change_at, reset_at, stop_end)
            t = t_next

            if t == reset_at:
                resets.pop(0)
                acc_vals, acc_counts = accrue(t)
                reg_total = reg_reject = reg_charged = 0.0 if rate else 0
                vals: dict[str, Value] = {**acc_vals, "total": reg_total, "reject": reg_reject}
                if rate:
                    vals["charged"] = reg_charged
                yield self._ev(t, vals, counts=acc_counts, fault="counter_reset")
            elif t == stop_end:
                running = True
                stop_end = INF
                earliest_stop = t + ms.stops.min_run_s
                next_random = self._gap(t)
                acc_from = t
                if not rate:
                    cycle_end = t + (cycle_left if cycle_left is not None else self._cycle_time(product))
                    cycle_left = None
                p_end = phase_end(t)
                yield self._ev(t, {"state": ms.running[phase].code}, state=running_truth())
            elif t == change_at and nxt_change is not None:
                _, new_product, changeover = nxt_change
                nxt_change = next(changes, None)
                acc_vals, acc_counts = accrue(t)
                product = new_product
                vals = {**acc_vals, "product": product}
                truth = None
                if changeover is not None:
                    kind = ms.stops.kinds[changeover]
                    running = False
                    stop_end = t + _draw(self.rng_stops, kind.duration_s)
                    cycle_end = p_end = INF
                    cycle_left = None  # the new product starts with a fresh cycle
                    vals["state"] = kind.code
                    truth = StateTruth(kind.code, kind.time_class, kind.reason or changeover)
                elif not rate:
                    cycle_end = t + self._cycle_time(product)  # the cycle restarts with the new die
                yield self._ev(t, vals, state=truth, product=product, counts=acc_counts)
            elif t == stop_at:
                if stop_kind is not None:
                    forced.pop(0)
                    name, kind = stop_kind, ms.stops.kinds[stop_kind]
                else:
                    name, kind = self._pick_kind()
                acc_vals, acc_counts = accrue(t)
                running = False
                stop_end = t + _draw(self.rng_stops, kind.duration_s)
                # An interrupted cycle resumes where it stopped (the press finishes the billet).
                cycle_left = round(cycle_end - t, 3) if not rate else None
                cycle_end = p_end = INF
                yield self._ev(t, {**acc_vals, "state": kind.code},
                               state=StateTruth(kind.code, kind.time_class, kind.reason or name), counts=acc_counts)
            elif t == cycle_end:
                cycle_no += 1
                reject = cycle_no in ms.reject_cycles or self.rng_cycles.random() < ms.reject_probability
                reg_total = (int(reg_total) + 1) % COUNTER_MOD
                vals = {"total": reg_total}
                if reject:
                    reg_reject = (int(reg_reject) + 1) % COUNTER_MOD
                    vals["reject"] = reg_reject
                cycle_end = t + self._cycle_time(product)
                yield self._ev(t, vals, counts=(CountDelta(1, 1 if reject else 0, product),))
            elif t == p_end:
                acc_vals, acc_counts = accrue(t)
                phase = (phase + 1) % len(ms.running)
                p_end = phase_end(t)
                yield self._ev(t, {**acc_vals, "state": ms.running[phase].code}, state=running_truth(),
                               counts=acc_counts)
            elif t == tick:
                tick = t + ms.update_interval_s
                acc_vals, acc_counts = accrue(t)
                # Mean-reverting random walk: the bath wanders but never drifts away.
                temperature += self.rng_temp.gauss(0.0, ms.temperature_wander_c) + 0.05 * (ms.temperature_c - temperature)
                yield self._ev(t, {**acc_vals, "temperature": f32(temperature)}, counts=acc_counts)


def _observe(gen: _MachineGen, ms: MachineScenario) -> Iterator[SimEvent]:
    """Apply bad-status windows: what a reader can actually see.

    During a window the server shows the last values with bad quality and no changes; at its end it shows
    the current values with good quality, and every count made inside is attributed to that moment, since
    nobody could have seen it earlier.
    """
    windows = sorted(ms.faults.bad_status, key=lambda w: w.start_s)
    current: dict[str, Value] = {}
    if not windows:
        yield from gen.events()
        return
    wi = 0
    bad = False
    held_counts: list[CountDelta] = []
    held_state: StateTruth | None = None
    held_product: str | None = None

    def mk(ts_off: float, values: dict[str, Value], good: bool, state: StateTruth | None, fault: str,
           counts: tuple[CountDelta, ...] = (), product: str | None = None) -> SimEvent:
        return SimEvent(ts=gen.t0 + _q(ts_off), machine=gen.machine, values=values, good=good, state=state,
                        counts=counts, product=product, fault=fault)

    for ev in gen.events():
        off = ev.ts - gen.t0
        while wi < len(windows) and current:
            w = windows[wi]
            if not bad and off >= w.start_s:
                bad = True
                yield mk(w.start_s, values=dict(current), good=False,
                         state=StateTruth(None, "unknown", "bad status"), fault="bad_status_start")
            elif bad and off >= w.end_s:
                bad = False
                wi += 1
                merged: dict[str, list[float]] = {}
                for c in held_counts:
                    acc = merged.setdefault(c.product, [0.0, 0.0, 0.0])
                    acc[0] += c.total
                    acc[1] += c.reject
                    acc[2] += c.input
                counts = tuple(CountDelta(a[0], a[1], p, a[2]) for p, a in merged.items())
                yield mk(w.end_s, values=dict(current), good=True, state=held_state, counts=counts,
                         product=held_product, fault="bad_status_end")
                held_counts, held_product = [], None
            else:
                break
        if ev.state is not None:
            held_state = ev.state
        current.update(ev.values)
        if bad:
            held_counts.extend(ev.counts)
            if ev.product is not None:
                held_product = ev.product
            continue
        yield ev


class Simulation:
    """All machines of a scenario merged into one time-ordered stream, pulled lazily by time."""

    def __init__(self, scenario: Scenario, seed: int | None, t0: float) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self.t0 = round(t0, 3)
        self._iters: list[Iterator[SimEvent]] = []
        self._heap: list[tuple[float, int, SimEvent]] = []
        for i, (mid, ms) in enumerate(scenario.machines.items()):
            it = _observe(_MachineGen(mid, ms, self.seed, self.t0), ms)
            self._iters.append(it)
            self._push(i)

    def _push(self, i: int) -> None:
        ev = next(self._iters[i], None)
        if ev is not None:
            # Ties between machines go in scenario order; within a machine the generator's order holds.
            heapq.heappush(self._heap, (ev.ts, i, ev))  # (ts, i) is unique: one buffered event per machine

    def peek_ts(self) -> float:
        return self._heap[0][0] if self._heap else INF

    def pop_until(self, ts: float) -> list[SimEvent]:
        """Every event with ts <= `ts`, in order."""
        out: list[SimEvent] = []
        while self._heap and self._heap[0][0] <= ts:
            _, i, ev = heapq.heappop(self._heap)
            out.append(ev)
            self._push(i)
        return out


def generate(scenario: Scenario, seed: int | None, t0: float, horizon_s: float) -> list[SimEvent]:
    """The timeline over [t0, t0 + horizon_s]: a pure function of its arguments."""
    sim = Simulation(scenario, seed, t0)
    return sim.pop_until(sim.t0 + horizon_s)
