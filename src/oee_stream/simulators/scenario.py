"""Scenario files for the simulated plant: what each machine does, with seeded randomness.

A scenario is pure data. `simulate.py` turns (scenario, seed, t0) into a deterministic timeline; the
servers only replay it. Validation mirrors config.py: every error names the file and the field, and
`check_against_plant` catches the mistakes that would make the ground truth disagree with the plant
model (unknown machine, state code mapped to another class, a "micro" stop longer than the threshold).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from oee_stream.config import ConfigError, MachineKind, Plant, parse_model, read_yaml

StopClass = Literal["planned_stop", "unplanned_stop", "micro_stop"]
Seconds = Annotated[float, Field(ge=0)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """A closed interval [min, max] a duration is drawn from uniformly."""

    min: Seconds
    max: Seconds

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    @classmethod
    def _coerce(cls, v: Any) -> Any:
        # `[1, 3]` is the natural way to write a range in YAML.
        if isinstance(v, list | tuple) and len(v) == 2:
            return {"min": v[0], "max": v[1]}
        return v


class StopKind(_Strict):
    """One kind of stop: the PLC state code it shows, its time class and how long it lasts."""

    code: int
    time_class: StopClass = Field(alias="class")
    duration_s: Range
    weight: Annotated[float, Field(ge=0)] = 1.0
    reason: str | None = None

    @field_validator("duration_s", mode="before")
    @classmethod
    def _range(cls, v: Any) -> Any:
        return Range._coerce(v)


class RunningPhase(_Strict):
    """A sub-state of running (furnace: charging → melting → tapping); all phases count as running."""

    code: int
    duration_s: Range | None = None  # None: stays in this phase until the next stop

    @field_validator("duration_s", mode="before")
    @classmethod
    def _range(cls, v: Any) -> Any:
        return Range._coerce(v)


class ProductSpec(_Strict):
    """Actual speed of one product: seconds per piece (discrete) or tonnes per hour (rate machines)."""

    cycle_time_s: PositiveSeconds | None = None
    rate_per_h: PositiveSeconds | None = None
    code: int | None = None  # numeric code written to Modbus; falls back to the plant's product code

    @model_validator(mode="after")
    def _one_of(self) -> ProductSpec:
        if (self.cycle_time_s is None) == (self.rate_per_h is None):
            raise ValueError("give exactly one of cycle_time_s (discrete) or rate_per_h (rate machines)")
        return self


class ProductChange(_Strict):
    at_s: Seconds
    product: str
    changeover: str | None = None  # name of a stop kind (e.g. a planned die change) run at the change


class StopPattern(_Strict):
    mean_time_between_s: PositiveSeconds = 15.0  # mean running time between two stops
    min_run_s: Seconds = 2.0  # keeps two stops apart so each one is classified on its own
    random_after_s: Seconds = 0.0  # no random stop before this offset (leaves room for the script)
    kinds: dict[str, StopKind] = Field(default_factory=dict)


class ScriptedStop(_Strict):
    """A stop forced at a fixed offset, so a short demo is guaranteed to show it whatever the seed."""

    at_s: Seconds
    kind: str


class BadWindow(_Strict):
    start_s: Seconds
    end_s: Seconds

    @model_validator(mode="after")
    def _ordered(self) -> BadWindow:
        if self.end_s <= self.start_s:
            raise ValueError("end_s must be after start_s")
        return self


class Faults(_Strict):
    total_counter_start: Annotated[int, Field(ge=0, lt=2**32)] = 0  # near 2**32 to exercise rollover
    reject_counter_start: Annotated[int, Field(ge=0, lt=2**32)] = 0
    counter_resets_at_s: list[Seconds] = Field(default_factory=list)  # PLC counters cleared to 0
    bad_status: list[BadWindow] = Field(default_factory=list)  # server reports bad quality / no data


class MachineScenario(_Strict):
    protocol: Literal["opcua", "modbus"]
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1  # Modbus device id
    products: dict[str, ProductSpec]
    product_schedule: list[ProductChange] = Field(default_factory=list)
    product_schedule_repeat_s: PositiveSeconds | None = None  # replay the schedule with this period
    running: list[RunningPhase] = Field(default_factory=lambda: [RunningPhase(code=1)])
    stops: StopPattern = Field(default_factory=StopPattern)
    script: list[ScriptedStop] = Field(default_factory=list)
    reject_probability: Annotated[float, Field(ge=0, le=1)] = 0.0
    reject_cycles: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)  # always-reject cycles
    cycle_jitter_s: Seconds = 0.0  # ± uniform jitter on every cycle
    # Rate machines only.
    update_interval_s: PositiveSeconds = 1.0
    charge_ratio: Annotated[float, Field(gt=0)] = 1.05  # charged tonnes per tapped tonne
    temperature_c: float = 720.0
    temperature_wander_c: Seconds = 1.5  # random-walk step per update
    faults: Faults = Field(default_factory=Faults)

    @field_validator("products", mode="before")
    @classmethod
    def _product_keys(cls, v: Any) -> Any:
        return {str(k): p for k, p in v.items()} if isinstance(v, dict) else v

    @field_validator("product_schedule", mode="before")
    @classmethod
    def _schedule_products(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{**e, "product": str(e["product"])} if isinstance(e, dict) and "product" in e else e
                    for e in v]
        return v

    @model_validator(mode="after")
    def _check(self) -> MachineScenario:
        if not self.products:
            raise ValueError("at least one product is needed")
        kinds = {"rate" if p.rate_per_h is not None else "discrete" for p in self.products.values()}
        if len(kinds) > 1:
            raise ValueError("products mix cycle_time_s and rate_per_h; a machine is discrete or rate")
        for i, ch in enumerate(self.product_schedule):
            if ch.product not in self.products:
                raise ValueError(f"product_schedule.{i}.product: {ch.product!r} is not one of {sorted(self.products)}")
            if ch.changeover is not None and ch.changeover not in self.stops.kinds:
                raise ValueError(
                    f"product_schedule.{i}.changeover: {ch.changeover!r} is not one of stops.kinds "
                    f"{sorted(self.stops.kinds)}"
                )
        ats = [c.at_s for c in self.product_schedule]
        if ats != sorted(ats):
            raise ValueError("product_schedule must be sorted by at_s")
        if self.product_schedule_repeat_s is not None and ats and ats[-1] >= self.product_schedule_repeat_s:
            raise ValueError("product_schedule_repeat_s must be longer than the last at_s of the schedule")
        for i, s in enumerate(self.script):
            if s.kind not in self.stops.kinds:
                raise ValueError(f"script.{i}.kind: {s.kind!r} is not one of stops.kinds {sorted(self.stops.kinds)}")
        if not self.running:
            raise ValueError("running needs at least one phase (the running state code)")
        if self.stops.kinds and sum(k.weight for k in self.stops.kinds.values()) <= 0:
            raise ValueError("stops.kinds: at least one weight must be > 0")
        return self

    @property
    def is_rate(self) -> bool:
        return next(iter(self.products.values())).rate_per_h is not None

    @property
    def first_product(self) -> str:
        if self.product_schedule and self.product_schedule[0].at_s == 0:
            return self.product_schedule[0].product
        return next(iter(self.products))


class Scenario(_Strict):
    name: str = "scenario"
    seed: int = 0  # default seed; the runner's seed argument overrides it
    machines: dict[str, MachineScenario]

    @model_validator(mode="after")
    def _unit_ids(self) -> Scenario:
        seen: dict[int, str] = {}
        for mid, m in self.machines.items():
            if m.protocol != "modbus":
                continue
            if m.unit_id in seen:
                raise ValueError(f"machines.{mid}.unit_id: {m.unit_id} is already used by {seen[m.unit_id]!r}")
            seen[m.unit_id] = mid
        return self


def load_scenario(path: Path | str, plant: Plant | None = None) -> Scenario:
    """Load and validate a scenario; with `plant`, also check it against the plant model."""
    scenario = parse_model(Scenario, read_yaml(path), path)
    if plant is not None:
        check_against_plant(scenario, plant, path)
    return scenario


def check_against_plant(scenario: Scenario, plant: Plant, source: Path | str = "<scenario>") -> None:
    """Raise ConfigError listing every place where the scenario would contradict the plant model."""
    problems: list[str] = []
    threshold_default = plant.policies.microstop_threshold_s
    for mid, ms in scenario.machines.items():
        where = f"machines.{mid}"
        try:
            m = plant.machine(mid)
        except KeyError:
            problems.append(f"{where}: no machine {mid!r} in the plant; allowed: {sorted(x.id for x in plant.machines)}")
            continue
        if (m.kind is MachineKind.rate) != ms.is_rate:
            want = "rate_per_h" if m.kind is MachineKind.rate else "cycle_time_s"
            problems.append(f"{where}.products: the plant says {m.kind.value}, so every product needs {want}")
        for p in ms.products:
            if p not in m.products:
                problems.append(f"{where}.products.{p}: not a product of {mid} in the plant {sorted(m.products)}")
            elif ms.protocol == "modbus" and ms.products[p].code is None and m.products[p].code is None:
                problems.append(f"{where}.products.{p}: Modbus needs a numeric product code (here or in the plant)")
        table = plant.state_tables.get(m.state_table or "", {})
        threshold = m.microstop_threshold_s if m.microstop_threshold_s is not None else threshold_default
        for i, ph in enumerate(ms.running):
            sc = table.get(ph.code)
            if sc is None or sc.time_class != "running":
                problems.append(f"{where}.running.{i}.code: {ph.code} is not a running code of state table "
                                f"{m.state_table!r}")
        for name, k in ms.stops.kinds.items():
            kw = f"{where}.stops.kinds.{name}"
            sc = table.get(k.code)
            plc_class = "unplanned_stop" if k.time_class == "micro_stop" else k.time_class
            if sc is None or sc.time_class != plc_class:
                problems.append(f"{kw}.code: {k.code} maps to "
                                f"{sc.time_class if sc else 'nothing'} in state table {m.state_table!r}, "
                                f"not {plc_class}")
            # A stop has to be classified the same way by the engine (by its length) and by the ledger.
            if k.time_class == "micro_stop" and k.duration_s.max >= threshold:
                problems.append(f"{kw}.duration_s: micro stops must be shorter than microstop_threshold_s "
                                f"({threshold} s)")
            if k.time_class == "unplanned_stop" and k.duration_s.min < threshold:
                problems.append(f"{kw}.duration_s: unplanned stops must last at least microstop_threshold_s "
                                f"({threshold} s)")
    if problems:
        raise ConfigError(f"{source}: scenario does not fit the plant ({len(problems)} problem(s))\n"
                          + "\n".join(f"  - {p}" for p in problems))
