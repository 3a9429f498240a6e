"""Response models of the HTTP API. The descriptions are the API documentation shown at /docs."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RATIO_NOTE = " A ratio, 0..1 (Performance may exceed 1, see flags); null when its denominator is zero."


class TimeClassSeconds(BaseModel):
    """Seconds of the window in each time class; they add up to the window length."""

    unscheduled: float = Field(default=0.0, description="Outside the shift calendar (no shift, holiday).")
    planned_excluded: float = Field(default=0.0, description="Breaks and planned maintenance windows from the calendar.")
    running: float = Field(default=0.0, description="The machine was producing.")
    planned_stop: float = Field(default=0.0, description="Changeover, setup, cleaning inside the shift.")
    unplanned_stop: float = Field(default=0.0, description="Breakdowns and stops at least the micro-stop threshold long.")
    micro_stop: float = Field(default=0.0, description="Unplanned stops shorter than the micro-stop threshold.")
    unknown: float = Field(default=0.0, description="No valid data (connector offline, bad quality, stale signal).")


class SixBigLosses(BaseModel):
    """The six big losses in seconds of planned production time."""

    unplanned_stops: float = 0.0
    planned_stops: float = 0.0
    small_stops: float = 0.0
    slow_cycles: float = Field(default=0.0, description="Running time minus net run time; negative when Performance > 1.")
    production_rejects: float = 0.0
    startup_rejects: float = 0.0


class KpiRecord(BaseModel):
    """One KPI record: an entity (machine, line, area, site) over one window, as the engine computed it
    (or, for `window = "range"`, the roll-up of stored hourly records: seconds and counts added, then the
    formulas applied)."""

    model_config = ConfigDict(extra="ignore")

    entity: str = Field(description="Machine id (or line/area/site id for roll-ups).")
    entity_kind: Literal["machine", "line", "area", "site"] | str = Field(description="machine | line | area | site")
    window: str = Field(description="Window kind: a rolling window name (15m, 1h, 8h, 24h), shift, day, week, hour, or range.")
    start: datetime = Field(description="Window start, UTC, ISO 8601.")
    end: datetime = Field(description="Window end, UTC, ISO 8601 (exclusive).")
    seconds: TimeClassSeconds
    total: float = Field(description="Total count (pieces), or output in `unit` for rate machines.")
    good: float = Field(description="Good count (total − reject), first-pass quality.")
    reject: float = Field(description="Rejects, including rework.")
    unit: str = Field(description="Unit of total/good/reject, e.g. pcs, billets, t.")
    availability: float | None = Field(description="Run time / planned production time." + RATIO_NOTE)
    performance: float | None = Field(description="Net run time / run time; not capped at 1." + RATIO_NOTE)
    quality: float | None = Field(description="Good / total." + RATIO_NOTE)
    oee: float | None = Field(
        description="Availability × Performance × Quality; 0 when there was planned time but nothing good "
        "was made; null without planned production time."
    )
    teep: float | None = Field(description="OEE × planned production time / all time; 0 when nothing was planned.")
    utilization: float | None = Field(description="Planned production time / all time." + RATIO_NOTE)
    coverage: float | None = Field(
        description="1 − unknown / planned production time: the share of the window backed by valid data."
    )
    ppt_s: float = Field(description="Planned production time in seconds.")
    run_time_s: float = Field(description="Run time in seconds (running, plus micro stops by default policy).")
    net_run_time_s: float = Field(description="Σ ideal cycle time × count: the time the output needed at ideal speed.")
    fully_productive_s: float = Field(description="Σ ideal cycle time × good count.")
    stops: int = Field(description="Number of unplanned stops (micro stops excluded).")
    mtbf_s: float | None = Field(description="Mean time between failures: run time / stops; null without stops.")
    mttr_s: float | None = Field(description="Mean time to repair: unplanned stop time / stops; null without stops.")
    six_big_losses_s: SixBigLosses
    downtime_by_reason_s: dict[str, float] = Field(description="Stop seconds per reason.")
    flags: list[str] = Field(
        default_factory=list,
        description="Warnings about the numbers, e.g. performance_over_100 (ideal cycle time probably wrong), "
        "partial_range (hours missing in a range roll-up), no_data, mixed_config.",
    )
    config_hash: str | None = Field(
        default=None, description="Hash of the plant configuration that produced the numbers; null for a roll-up "
        "with no stored record, or whose records come from several configurations (flag mixed_config)."
    )
    weight_yield: float | None = Field(default=None, description="Good output / charged input (rate machines).")
    input_total: float | None = Field(default=None, description="Charged input (rate machines).")
    state: str | None = Field(default=None, description="Time class at window end (machines only).")
    reason: str | None = Field(default=None, description="Stop reason at window end, if stopped.")
    state_since: datetime | None = Field(default=None, description="Since when the machine is in `state`, UTC.")
    product: str | None = Field(default=None, description="Product running at window end.")
    speed_per_h: float | None = Field(default=None, description="Current speed in units per hour; 0 when stopped.")
    ideal_speed_per_h: float | None = Field(default=None, description="Ideal speed of the current product, units per hour.")
    shift: str | None = Field(default=None, description="Shift name for shift windows.")
    records: int | None = Field(default=None, description="Range roll-ups only: number of hourly records added.")


class KpiSummary(BaseModel):
    """The headline numbers of the newest stored result of one window kind."""

    start: datetime = Field(description="Window start, UTC.")
    end: datetime = Field(description="Window end, UTC.")
    computed_at: datetime = Field(description="When the stored result was computed (UTC).")
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    teep: float | None
    coverage: float | None
    total: float
    good: float
    reject: float
    unit: str
    flags: list[str]


class MachineOut(BaseModel):
    """A machine of the plant model with its current state and latest KPIs."""

    id: str = Field(description="Machine id as used in topics and URLs.")
    name: str | None = Field(description="Display name from the plant model.")
    line: str = Field(description="Id of the line the machine belongs to.")
    line_name: str | None = Field(description="Display name of the line.")
    area: str = Field(description="Area of the line.")
    kind: Literal["discrete", "rate"] = Field(description="discrete (counts pieces) or rate (t/h, m/min).")
    unit: str = Field(description="Unit of its counts/output.")
    state: str | None = Field(
        description="Current time class (running, planned_stop, unplanned_stop, micro_stop, unknown, …); "
        "null when nothing is stored yet."
    )
    reason: str | None = Field(description="Current stop reason, if any.")
    state_since: datetime | None = Field(description="Since when the machine is in `state`, UTC.")
    kpis: dict[str, KpiSummary] = Field(
        description="Newest stored result per window kind, keyed by window (e.g. '15m', 'shift'). "
        "Window kinds without any stored result are absent."
    )


class DependencyStatus(BaseModel):
    ok: bool
    detail: str | None = Field(default=None, description="Why the dependency is not ready.")


class ReadyOut(BaseModel):
    """Readiness: 200 when every dependency answers, 503 otherwise (same body)."""

    ready: bool
    dependencies: dict[str, DependencyStatus]


class LiveOut(BaseModel):
    alive: bool = True


class ErrorOut(BaseModel):
    """Error body for 404, 422 (parameter errors raised by this API) and 503."""

    detail: str = Field(description="What went wrong and, where it applies, the allowed values.")


# ------------------------------------------------------------------------------------------ read API


class StateOut(BaseModel):
    state: str | None = Field(description="Current time class; null when nothing is stored yet.")
    reason: str | None = Field(default=None, description="Current stop reason, if any.")
    state_since: str | None = Field(default=None, description="Since when, ISO 8601 in the requested tz.")
    state_age_s: float | None = Field(default=None, description="Seconds in the current state.")


class PlantMachine(StateOut):
    id: str
    name: str | None
    kind: str
    unit: str
    kpis: dict[str, KpiSummary] = Field(description="Newest stored result per window kind.")


class PlantLine(BaseModel):
    id: str
    name: str | None
    constraint: str | None = Field(description="Designated bottleneck machine; line KPIs follow it.")
    state: str | None = Field(description="State of the constraint machine, if one is configured.")
    state_counts: dict[str, int] = Field(description="Number of the line's machines in each state.")
    kpis: dict[str, KpiSummary]
    machines: list[PlantMachine]


class PlantArea(BaseModel):
    id: str
    state_counts: dict[str, int]
    kpis: dict[str, KpiSummary]
    lines: list[PlantLine]


class PlantSite(BaseModel):
    id: str
    name: str | None
    timezone: str
    state_counts: dict[str, int]
    kpis: dict[str, KpiSummary]
    areas: list[PlantArea]


class PlantOut(BaseModel):
    """The plant tree site → areas → lines → machines with current states and latest KPIs."""

    generated_at: str = Field(description="When this answer was made, in the requested tz.")
    site: PlantSite


class SeriesOut(BaseModel):
    """Stored calendar-aligned results of one entity, oldest first, one page."""

    entity: str
    entity_kind: str
    bucket: Literal["hour", "shift", "day"]
    items: list[KpiRecord]
    total: int = Field(description="Buckets matching without limit/offset.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last page.")


class LossItem(BaseModel):
    name: str
    seconds: float
    share: float | None = Field(description="Share of the listed total; null when that is 0.")


class LossesOut(BaseModel):
    """Loss Pareto over a range: sums of stored hourly results, largest first."""

    entity: str
    entity_kind: str
    start: str
    end: str
    ppt_s: float = Field(description="Planned production time of the range, seconds.")
    records: int = Field(description="Hourly results added.")
    six_big_losses: list[LossItem] = Field(description="Six big losses in seconds, descending.")
    downtime_by_reason: list[LossItem] = Field(
        description="Stop seconds per reason, descending. For lines, areas and the site: summed over "
        "their machines (the line KPIs themselves follow the constraint machine)."
    )
    flags: list[str]


class ShiftHour(BaseModel):
    start: str
    end: str
    planned_s: float = Field(description="Planned production time of the hour inside the shift, from the calendar.")
    product: str | None = Field(description="Product running at the hour's start (the one the previous hour "
                                            "ended with).")
    ideal: float = Field(description="Units the machine makes in planned_s at ideal speed: at the product mix "
                                     "the hour actually ran once it is over and made something, else at the ideal "
                                     "speed of `product`.")
    target: float = Field(description="Target units: configured units/hour, else ideal × target OEE, else ideal.")
    total: float | None = Field(description="Actual total; null for hours not started yet.")
    good: float | None
    reject: float | None
    oee: float | None
    cumulative_target: float
    cumulative_good: float | None


class ShiftReportOut(BaseModel):
    """Hour-by-hour target vs actual of one machine in one shift."""

    machine: str
    unit: str
    shift: str
    start: str
    end: str
    target_basis: Literal["configured", "target_oee", "ideal"]
    hours: list[ShiftHour]
    target: float
    good: float
    total: float


class DowntimeEvent(BaseModel):
    machine: str
    start: str = Field(description="Event start; also its key in PUT /api/v1/downtime/{machine}/{start}.")
    end: str | None = Field(description="Null while the event is still going on.")
    duration_s: float = Field(description="Seconds; for an open event, until now.")
    time_class: str
    reason: str | None
    reason_category: str | None = None
    reason_source: str | None = Field(description="plc | rule | operator")
    comment: str | None


class DowntimeOut(BaseModel):
    machine: str
    items: list[DowntimeEvent]
    total: int
    limit: int
    offset: int
    next_offset: int | None
