"""The KPI record every window of every entity produces (OEE-SEMANTICS.md section 5)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

TIME_CLASSES: tuple[str, ...] = (
    "unscheduled",
    "planned_excluded",
    "running",
    "planned_stop",
    "unplanned_stop",
    "micro_stop",
    "unknown",
)

SIX_BIG_LOSSES: tuple[str, ...] = (
    "unplanned_stops",
    "planned_stops",
    "small_stops",
    "slow_cycles",
    "production_rejects",
    "startup_rejects",
)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class KpiResult:
    entity: str  # machine id, or line/area/site id for roll-ups
    entity_kind: str  # machine | line | area | site
    window: str  # "15m", "1h", "shift", "day", "week", "hour", "range"
    start: float  # UTC epoch seconds
    end: float
    seconds: dict[str, float]  # every time class, adds up to end - start
    total: float
    good: float
    reject: float
    unit: str
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None
    teep: float | None
    utilization: float | None
    coverage: float | None
    ppt_s: float
    run_time_s: float
    net_run_time_s: float
    fully_productive_s: float
    stops: int
    mtbf_s: float | None
    mttr_s: float | None
    six_big_losses_s: dict[str, float]
    downtime_by_reason_s: dict[str, float]
    flags: list[str] = field(default_factory=list)
    config_hash: str = ""
    weight_yield: float | None = None
    input_total: float | None = None
    state: str | None = None  # current time class at `end` (machines only)
    reason: str | None = None
    state_since: float | None = None
    product: str | None = None
    speed_per_h: float | None = None  # current speed, 0 when stopped
    ideal_speed_per_h: float | None = None
    shift: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = iso(self.start)
        d["end"] = iso(self.end)
        d["state_since"] = iso(self.state_since) if self.state_since is not None else None
        return d
