"""The plant model: site → lines → machines, state tables, products and shift calendars.

Loaded from YAML and validated once with pydantic. Every error names the file, the field path and what
is allowed, because the people who write these files are integration engineers on a plant network, not
Python developers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import date, time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """An invalid configuration file: the message names the file, the field and what is allowed."""


class TimeClass(StrEnum):
    """The time classes of OEE-SEMANTICS.md section 1, in the engine's index order."""

    unscheduled = "unscheduled"
    planned_excluded = "planned_excluded"
    running = "running"
    planned_stop = "planned_stop"
    unplanned_stop = "unplanned_stop"
    micro_stop = "micro_stop"
    unknown = "unknown"


# Classes a PLC state code may map to: the calendar owns unscheduled/planned_excluded and the engine
# derives micro_stop from the length of an unplanned stop.
STATE_CODE_CLASSES = ("running", "planned_stop", "unplanned_stop", "unknown")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StateCode(_Strict):
    time_class: Literal["running", "planned_stop", "unplanned_stop", "unknown"] = Field(alias="class")
    reason: str | None = None


class Product(_Strict):
    """Ideal speed of one product on one machine: a cycle time (discrete) or a rate (rate machines)."""

    ideal_cycle_time_s: Annotated[float, Field(gt=0)] | None = None
    ideal_rate_per_h: Annotated[float, Field(gt=0)] | None = None
    code: int | None = None  # numeric product code a PLC reports instead of the name

    @model_validator(mode="after")
    def _one_of(self) -> Product:
        if (self.ideal_cycle_time_s is None) == (self.ideal_rate_per_h is None):
            raise ValueError("give exactly one of ideal_cycle_time_s (discrete) or ideal_rate_per_h (rate)")
        return self

    @property
    def ideal_seconds_per_unit(self) -> float:
        if self.ideal_cycle_time_s is not None:
            return self.ideal_cycle_time_s
        assert self.ideal_rate_per_h is not None
        return 3600.0 / self.ideal_rate_per_h


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ALL_DAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Break(_Strict):
    start: time
    end: time
    name: str = "break"


class Shift(_Strict):
    """A recurring shift: starts on each listed weekday at `start` local time; `end` <= `start` means
    the shift ends the next day (night shift)."""

    name: str
    start: time
    end: time
    days: list[Weekday] = Field(default_factory=lambda: list(ALL_DAYS))
    breaks: list[Break] = Field(default_factory=list)


class CalendarException(_Strict):
    """A date whose shifts are cancelled (`holiday`) or replaced by the listed shifts (`replace`)."""

    date: date
    kind: Literal["holiday", "replace"] = "holiday"
    shifts: list[Shift] = Field(default_factory=list)


class Calendar(_Strict):
    timezone: str
    shifts: list[Shift]
    exceptions: list[CalendarException] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA timezone {v!r} (e.g. 'Europe/Berlin', 'UTC')") from exc
        return v


class MachineKind(StrEnum):
    discrete = "discrete"
    rate = "rate"


class Machine(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    name: str | None = None
    kind: MachineKind = MachineKind.discrete
    unit: str = "pcs"
    calendar: str = "default"
    state_table: str | None = None
    state_source: Literal["state_code", "run_bit", "counts"] = "state_code"
    no_count_stop_after_s: Annotated[float, Field(gt=0)] = 60.0
    counter_width: Literal[16, 32, 64] | None = 32
    products: dict[str, Product]
    default_product: str | None = None
    microstop_threshold_s: Annotated[float, Field(ge=0)] | None = None
    target_oee: Annotated[float, Field(ge=0, le=1)] | None = None

    @field_validator("products", mode="before")
    @classmethod
    def _product_keys(cls, v: Any) -> Any:
        # Alloy names like 6063 arrive from YAML as integers.
        return {str(k): p for k, p in v.items()} if isinstance(v, Mapping) else v

    @model_validator(mode="after")
    def _check(self) -> Machine:
        if not self.products:
            raise ValueError("at least one product with its ideal speed is needed")
        if self.default_product is not None and self.default_product not in self.products:
            raise ValueError(
                f"default_product {self.default_product!r} is not one of products {sorted(self.products)}"
            )
        for name, p in self.products.items():
            if self.kind is MachineKind.discrete and p.ideal_cycle_time_s is None:
                raise ValueError(f"products.{name}: a discrete machine needs ideal_cycle_time_s")
            if self.kind is MachineKind.rate and p.ideal_rate_per_h is None:
                raise ValueError(f"products.{name}: a rate machine needs ideal_rate_per_h")
        if self.state_source == "state_code" and self.state_table is None:
            raise ValueError("state_source 'state_code' needs state_table (a key of state_tables)")
        return self

    @property
    def first_product(self) -> str:
        return self.default_product or next(iter(self.products))


class Line(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    name: str | None = None
    area: str = "default"
    constraint: str | None = None
    machines: list[Machine]

    @model_validator(mode="after")
    def _constraint(self) -> Line:
        ids = [m.id for m in self.machines]
        if self.constraint is not None and self.constraint not in ids:
            raise ValueError(f"constraint {self.constraint!r} is not a machine of this line {ids}")
        return self


class Policies(_Strict):
    microstop_threshold_s: Annotated[float, Field(ge=0)] = 120.0
    microstops_as: Literal["performance", "availability"] = "performance"
    unknown_policy: Literal["include", "exclude"] = "include"
    stale_after_s: Annotated[float, Field(gt=0)] | None = None
    allowed_lateness_s: Annotated[float, Field(ge=0)] = 300.0
    max_clock_skew_s: Annotated[float, Field(ge=0)] = 60.0


class Site(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    name: str | None = None
    timezone: str = "UTC"

    _tz = field_validator("timezone")(Calendar._tz.__func__)  # type: ignore[attr-defined]


class RollingWindow(_Strict):
    name: str
    seconds: Annotated[float, Field(gt=0)]


def _default_rolling() -> list[RollingWindow]:
    return [
        RollingWindow(name="15m", seconds=900),
        RollingWindow(name="1h", seconds=3600),
        RollingWindow(name="8h", seconds=8 * 3600),
        RollingWindow(name="24h", seconds=24 * 3600),
    ]


class Plant(_Strict):
    site: Site
    policies: Policies = Field(default_factory=Policies)
    rolling_windows: list[RollingWindow] = Field(default_factory=_default_rolling)
    calendars: dict[str, Calendar]
    state_tables: dict[str, dict[Annotated[int, Field(ge=0)], StateCode]] = Field(default_factory=dict)
    lines: list[Line]

    @model_validator(mode="after")
    def _refs(self) -> Plant:
        seen: set[str] = set()
        for li, line in enumerate(self.lines):
            for mi, m in enumerate(line.machines):
                where = f"lines.{li}.machines.{mi}"
                if m.id in seen:
                    raise ValueError(f"{where}.id: machine id {m.id!r} is used twice")
                seen.add(m.id)
                if m.calendar not in self.calendars:
                    raise ValueError(
                        f"{where}.calendar: {m.calendar!r} is not defined; allowed: {sorted(self.calendars)}"
                    )
                if m.state_table is not None and m.state_table not in self.state_tables:
                    raise ValueError(
                        f"{where}.state_table: {m.state_table!r} is not defined; "
                        f"allowed: {sorted(self.state_tables)}"
                    )
        return self

    @property
    def machines(self) -> list[Machine]:
        return [m for line in self.lines for m in line.machines]

    def machine(self, machine_id: str) -> Machine:
        for m in self.machines:
            if m.id == machine_id:
                return m
        raise KeyError(machine_id)

    def line_of(self, machine_id: str) -> Line:
        for line in self.lines:
            if any(m.id == machine_id for m in line.machines):
                return line
        raise KeyError(machine_id)

    def config_hash(self) -> str:
        """Stable hash of the validated model: results carry it so a number can be traced to its settings."""
        body = orjson.dumps(self.model_dump(mode="json", by_alias=True), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(body).hexdigest()[:16]


_FIELD_MSG = re.compile(r"^Value error, (?P<field>[A-Za-z_][\w.]*): (?P<msg>.*)$", re.DOTALL)


def format_validation_error(path: Path | str, exc: ValidationError) -> str:
    """One line per problem: `file: field.path: message`.

    A cross-field check in a model validator raises "field: message"; it is reported at that field
    rather than at the model that ran the check.
    """
    lines = [f"{path}: invalid configuration ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"]
        m = _FIELD_MSG.match(msg)
        if m:
            loc.append(m["field"])
            msg = m["msg"]
        elif err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs for allowed keys)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  - {'.'.join(loc) or '(top level)'}: {msg}")
    return "\n".join(lines)


def read_yaml(path: Path | str) -> Any:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: file not found") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc


def parse_model(model: type[M], data: Any, source: Path | str) -> M:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from exc


def load_plant(path: Path | str) -> Plant:
    return parse_model(Plant, read_yaml(path), path)
