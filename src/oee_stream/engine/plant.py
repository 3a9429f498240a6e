"""The plant model compiled into lookup arrays indexed by machine (the engine never walks the YAML)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from oee_stream.config import MachineKind, Plant

# Signal codes of the engine's sample arrays. GAP rows are made by the engine (connector outages);
# GOOD_COUNT is a PLC's own good-parts counter (see docs/engine.md, "good reported directly");
# STARTUP_REJECT counts the start-up scrap, a subset of `reject` (docs/engine.md, "startup rejects").
STATE, RUN, TOTAL, REJECT, INPUT, PRODUCT, GAP, GOOD_COUNT, STARTUP_REJECT = 0, 1, 2, 3, 4, 5, 6, 7, 8
N_SIGNALS = 9
SIGNAL_CODES: dict[str, int] = {
    "state": STATE, "run": RUN, "total": TOTAL, "reject": REJECT, "input": INPUT, "product": PRODUCT,
    "good": GOOD_COUNT, "startup_reject": STARTUP_REJECT,
}

GOOD, UNCERTAIN, BAD = 0, 1, 2
QUALITY_CODES: dict[str, int] = {"good": GOOD, "uncertain": UNCERTAIN, "bad": BAD}

# Time-class indices, the order of result.TIME_CLASSES.
UNSCHEDULED, PLANNED_EXCLUDED, RUNNING, PLANNED_STOP, UNPLANNED_STOP, MICRO_STOP, UNKNOWN = range(7)
N_CLASSES = 7
CLASS_INDEX = {
    "unscheduled": UNSCHEDULED, "planned_excluded": PLANNED_EXCLUDED, "running": RUNNING,
    "planned_stop": PLANNED_STOP, "unplanned_stop": UNPLANNED_STOP, "micro_stop": MICRO_STOP,
    "unknown": UNKNOWN,
}

# Reasons the engine itself assigns; PLC reasons from state tables follow.
BUILTIN_REASONS = ("", "no data", "bad quality", "unmapped state code", "connector offline", "stale signal",
                   "stopped", "break", "unscheduled", "no count")
R_NONE, R_NO_DATA, R_BAD, R_UNMAPPED, R_OFFLINE, R_STALE, R_STOPPED, R_BREAK, R_UNSCHEDULED, R_NO_COUNT = range(10)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class CompiledPlant:
    plant: Plant
    machine_ids: tuple[str, ...]
    index: dict[str, int]
    line_of: IntArray  # machine -> line index
    calendar_of: IntArray  # machine -> calendar index
    calendar_names: tuple[str, ...]
    state_class: npt.NDArray[np.int8]  # (M, max_code + 1) -> class index; UNKNOWN where unmapped
    state_reason: IntArray  # (M, max_code + 1) -> reason index
    state_mapped: npt.NDArray[np.bool_]
    reasons: tuple[str, ...]
    sec_per_unit: FloatArray  # (M, max_products) ideal seconds per unit
    product_names: tuple[tuple[str, ...], ...]
    product_lookup: tuple[dict[str, int], ...]  # per machine: name or str(code) -> product index
    default_product: IntArray
    counter_modulus: FloatArray  # 2**width, 0 when the counter has no fixed width
    microstop_threshold: FloatArray
    uses_run_bit: npt.NDArray[np.bool_]
    uses_counts: npt.NDArray[np.bool_]
    no_count_stop_after: FloatArray
    is_rate: npt.NDArray[np.bool_]
    units: tuple[str, ...]
    config_hash: str

    @property
    def n(self) -> int:
        return len(self.machine_ids)


def compile_plant(plant: Plant) -> CompiledPlant:
    machines = plant.machines
    m_count = len(machines)
    reasons: list[str] = list(BUILTIN_REASONS)
    reason_idx = {r: i for i, r in enumerate(reasons)}

    def reason_id(r: str | None) -> int:
        if r is None:
            return R_NONE
        if r not in reason_idx:
            reason_idx[r] = len(reasons)
            reasons.append(r)
        return reason_idx[r]

    max_code = 0
    for tbl in plant.state_tables.values():
        if tbl:
            max_code = max(max_code, max(tbl))
    state_class = np.full((m_count, max_code + 1), 6, dtype=np.int8)  # UNKNOWN
    state_reason = np.full((m_count, max_code + 1), R_UNMAPPED, dtype=np.int64)
    state_mapped = np.zeros((m_count, max_code + 1), dtype=np.bool_)
    max_products = max(len(m.products) for m in machines) if machines else 1
    sec_per_unit = np.ones((m_count, max_products), dtype=np.float64)
    cal_names = tuple(plant.calendars)
    line_of = np.zeros(m_count, dtype=np.int64)
    line_index = {line.id: i for i, line in enumerate(plant.lines)}
    line_of_machine = {m.id: line_index[line.id] for line in plant.lines for m in line.machines}
    product_names: list[tuple[str, ...]] = []
    product_lookup: list[dict[str, int]] = []
    for i, m in enumerate(machines):
        line_of[i] = line_of_machine[m.id]
        if m.state_table is not None:
            for code, sc in plant.state_tables[m.state_table].items():
                if code < 0:
                    continue
                state_class[i, code] = CLASS_INDEX[sc.time_class]
                state_reason[i, code] = reason_id(sc.reason)
                state_mapped[i, code] = True
        names = tuple(m.products)
        product_names.append(names)
        lookup: dict[str, int] = {}
        for j, (name, p) in enumerate(m.products.items()):
            sec_per_unit[i, j] = p.ideal_seconds_per_unit
            lookup[name] = j
            if p.code is not None:
                lookup[str(p.code)] = j
                lookup[f"{float(p.code)}"] = j
        product_lookup.append(lookup)
    return CompiledPlant(
        plant=plant,
        machine_ids=tuple(m.id for m in machines),
        index={m.id: i for i, m in enumerate(machines)},
        line_of=line_of,
        calendar_of=np.array([cal_names.index(m.calendar) for m in machines], dtype=np.int64),
        calendar_names=cal_names,
        state_class=state_class,
        state_reason=state_reason,
        state_mapped=state_mapped,
        reasons=tuple(reasons),
        sec_per_unit=sec_per_unit,
        product_names=tuple(product_names),
        product_lookup=tuple(product_lookup),
        default_product=np.array([m.products and list(m.products).index(m.first_product) for m in machines],
                                 dtype=np.int64),
        counter_modulus=np.array([float(2 ** m.counter_width) if m.counter_width and m.kind is MachineKind.discrete
                                  else 0.0 for m in machines], dtype=np.float64),
        microstop_threshold=np.array(
            [m.microstop_threshold_s if m.microstop_threshold_s is not None
             else plant.policies.microstop_threshold_s for m in machines], dtype=np.float64),
        uses_run_bit=np.array([m.state_source == "run_bit" for m in machines], dtype=np.bool_),
        uses_counts=np.array([m.state_source == "counts" for m in machines], dtype=np.bool_),
        no_count_stop_after=np.array([m.no_count_stop_after_s for m in machines], dtype=np.float64),
        is_rate=np.array([m.kind is MachineKind.rate for m in machines], dtype=np.bool_),
        units=tuple(m.unit for m in machines),
        config_hash=plant.config_hash(),
    )
