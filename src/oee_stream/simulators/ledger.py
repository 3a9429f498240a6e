"""The ground truth of a simulated run: what every machine did, second by second, and what it made.

The ledger is filled from the same events that are written to the OPC UA / Modbus servers, at the same
timestamps, so it is exactly what a perfect connector could have seen. `summary` turns it into the
numbers of OEE-SEMANTICS.md section 2, computed the plain way (no NumPy, no engine code), so tests can
hold the engine against an independent reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from oee_stream.config import Plant
from oee_stream.engine.result import TIME_CLASSES
from oee_stream.simulators.scenario import Scenario
from oee_stream.simulators.simulate import SimEvent, Simulation


@dataclass(slots=True)
class StateInterval:
    start: float
    end: float | None  # None: still open, ends at the ledger's known_until
    code: int | None
    time_class: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class CountRecord:
    ts: float
    total: float
    reject: float
    product: str
    input: float = 0.0


@dataclass(frozen=True, slots=True)
class ProductRecord:
    ts: float
    product: str


@dataclass(frozen=True, slots=True)
class FaultRecord:
    ts: float
    kind: str


@dataclass(slots=True)
class MachineLedger:
    intervals: list[StateInterval] = field(default_factory=list)
    counts: list[CountRecord] = field(default_factory=list)
    products: list[ProductRecord] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    writes: list[tuple[float, dict[str, Any], bool]] = field(default_factory=list)  # (ts, values, good)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


@dataclass
class Ledger:
    scenario: str = ""
    seed: int = 0
    t0: float = 0.0
    known_until: float = 0.0  # the truth is known for every machine up to here
    machines: dict[str, MachineLedger] = field(default_factory=dict)
    keep_writes: bool = True  # every written value, for tests comparing what clients saw

    # ------------------------------------------------------------------------------------- recording

    def apply(self, ev: SimEvent) -> None:
        m = self.machines.setdefault(ev.machine, MachineLedger())
        if self.keep_writes:
            m.writes.append((ev.ts, dict(ev.values), ev.good))
        if ev.state is not None:
            st = ev.state
            last = m.intervals[-1] if m.intervals else None
            if last is None or (last.code, last.time_class, last.reason) != (st.code, st.time_class, st.reason):
                if last is not None:
                    last.end = ev.ts
                m.intervals.append(StateInterval(ev.ts, None, st.code, st.time_class, st.reason))
        for c in ev.counts:
            if c.total or c.reject or c.input:
                m.counts.append(CountRecord(ev.ts, c.total, c.reject, c.product, c.input))
        if ev.product is not None:
            m.products.append(ProductRecord(ev.ts, ev.product))
        if ev.fault is not None:
            m.faults.append(FaultRecord(ev.ts, ev.fault))
        self.known_until = max(self.known_until, ev.ts)

    def advance(self, ts: float) -> None:
        """Nothing changed up to `ts`: the last state of every machine holds until then."""
        self.known_until = max(self.known_until, ts)

    # ------------------------------------------------------------------------------------- reading

    def value_at(self, machine: str, signal: str, ts: float) -> Any:
        """The value of a signal as written at or before `ts` (None if never written)."""
        out = None
        for wts, values, _good in self.machines[machine].writes:
            if wts > ts:
                break
            if signal in values:
                out = values[signal]
        return out

    def summary(self, machine_id: str, start: float, end: float, plant: Plant) -> dict[str, Any]:
        """Time classes, counts and KPIs of one machine over [start, end), per OEE-SEMANTICS.md section 2.

        Time before the machine's first state or after `known_until` is `unknown`. Counts belong to the
        window holding their timestamp (start inclusive, end exclusive). The shift calendar is not applied:
        the simulator assumes every second is scheduled (true for the demo plant's 24 h calendar).
        """
        m = self.machines.get(machine_id, MachineLedger())
        pm = plant.machine(machine_id)
        pol = plant.policies
        secs = dict.fromkeys(TIME_CLASSES, 0.0)
        covered = 0.0
        stops = {"planned_stop": 0, "unplanned_stop": 0, "micro_stop": 0}
        for iv in m.intervals:
            iv_end = iv.end if iv.end is not None else self.known_until
            s, e = max(iv.start, start), min(iv_end, end, self.known_until)
            if e > s:
                secs[iv.time_class] += e - s
                covered += e - s
            if iv.time_class in stops and start <= iv.start < end:
                stops[iv.time_class] += 1
        secs["unknown"] += max(0.0, (end - start) - covered)

        by_product: dict[str, dict[str, float]] = {}
        for c in m.counts:
            if start <= c.ts < end:
                bp = by_product.setdefault(c.product, {"total": 0.0, "reject": 0.0, "input": 0.0})
                bp["total"] += c.total
                bp["reject"] += c.reject
                bp["input"] += c.input
        total = sum(b["total"] for b in by_product.values())
        reject = sum(b["reject"] for b in by_product.values())
        good = total - reject
        net_run = sum(pm.products[p].ideal_seconds_per_unit * b["total"] for p, b in by_product.items())

        ppt = secs["running"] + secs["planned_stop"] + secs["unplanned_stop"] + secs["micro_stop"]
        if pol.unknown_policy == "include":
            ppt += secs["unknown"]
        run = secs["running"] + (secs["micro_stop"] if pol.microstops_as == "performance" else 0.0)
        a = _ratio(run, ppt)
        p = _ratio(net_run, run)
        q = _ratio(good, total)
        oee: float | None
        if a is not None and p is not None and q is not None:
            oee = a * p * q
        elif ppt > 0 and good <= 0:
            oee = 0.0  # OEE-SEMANTICS.md section 3: nothing good made in planned time
        else:
            oee = None
        n_unplanned = stops["unplanned_stop"]
        flags = ["performance_over_100"] if p is not None and p > 1.0 else []
        return {
            "machine": machine_id,
            "start": start,
            "end": end,
            "seconds": secs,
            "unit": pm.unit,
            "total": total,
            "good": good,
            "reject": reject,
            "input": sum(b["input"] for b in by_product.values()),
            "by_product": by_product,
            "ppt": ppt,
            "run_time": run,
            "net_run_time": net_run,
            "availability": a,
            "performance": p,
            "quality": q,
            "oee": oee,
            "coverage": (1.0 - secs["unknown"] / ppt) if ppt > 0 else None,
            "stops": stops,
            "mtbf_s": run / n_unplanned if n_unplanned else None,
            "mttr_s": secs["unplanned_stop"] / n_unplanned if n_unplanned else None,
            "flags": flags,
        }

    # ------------------------------------------------------------------------------------- files

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "t0": self.t0,
            "known_until": self.known_until,
            "machines": {
                mid: {
                    "intervals": [asdict(i) for i in m.intervals],
                    "counts": [asdict(c) for c in m.counts],
                    "products": [asdict(p) for p in m.products],
                    "faults": [asdict(f) for f in m.faults],
                }
                for mid, m in self.machines.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ledger:
        led = cls(scenario=d.get("scenario", ""), seed=int(d.get("seed", 0)), t0=float(d["t0"]),
                  known_until=float(d["known_until"]), keep_writes=False)
        for mid, m in d["machines"].items():
            led.machines[mid] = MachineLedger(
                intervals=[StateInterval(**i) for i in m["intervals"]],
                counts=[CountRecord(**c) for c in m["counts"]],
                products=[ProductRecord(**p) for p in m["products"]],
                faults=[FaultRecord(**f) for f in m["faults"]],
            )
        return led

    def write(self, path: Path | str) -> None:
        # Write then rename, so a reader never sees half a file while the simulator is running.
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2))
        tmp.replace(p)

    @classmethod
    def read(cls, path: Path | str) -> Ledger:
        return cls.from_dict(orjson.loads(Path(path).read_bytes()))


def build_ledger(scenario: Scenario, seed: int | None, t0: float, horizon_s: float) -> Ledger:
    """The ledger of the first `horizon_s` seconds, without any server: what a live run would record."""
    sim = Simulation(scenario, seed, t0)
    led = Ledger(scenario=scenario.name, seed=sim.seed, t0=sim.t0)
    for ev in sim.pop_until(sim.t0 + horizon_s):
        led.apply(ev)
    led.advance(sim.t0 + horizon_s)
    return led
