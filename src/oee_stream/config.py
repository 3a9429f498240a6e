"""The plant model: site → lines → machines, state tables, products and shift calendars.

Loaded from YAML and validated once with pydantic (through `config_files`): every error names the file,
the field path and what is allowed. Also the plant's warnings: valid settings that are probably not meant.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import date, time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

# The file machinery lived here; these names are still imported from this module (simulators, tests,
# connector plugins).
from oee_stream.config_files import ConfigError as ConfigError
from oee_stream.config_files import FieldPath as FieldPath
from oee_stream.config_files import FieldProblems as FieldProblems
from oee_stream.config_files import Sexagesimal as Sexagesimal
from oee_stream.config_files import allowed_keys as allowed_keys
from oee_stream.config_files import did_you_mean as did_you_mean
from oee_stream.config_files import format_validation_error as format_validation_error
from oee_stream.config_files import load_yaml as load_yaml
from oee_stream.config_files import model_at as model_at
from oee_stream.config_files import parse_model as parse_model
from oee_stream.config_files import raise_problems, suggestion
from oee_stream.config_files import read_yaml as read_yaml
from oee_stream.config_files import validate_model as validate_model
from oee_stream.config_files import validation_problems as validation_problems


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


# An id is a segment of MQTT topics and API paths; the connector files use the same rule. A leading "_" is
# reserved for the bus's own segments (`_status`, `_oee`, `_line`, ...), and "." or ".." is no path part.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Id = Annotated[str, Field(pattern=ID_PATTERN)]


class StateCode(_Strict):
    time_class: Literal["running", "planned_stop", "unplanned_stop", "unknown"] = Field(alias="class")
    reason: str | None = None


class Product(_Strict):
    """Ideal speed of one product on one machine: a cycle time (discrete) or a rate (rate machines)."""

    ideal_cycle_time_s: Annotated[float, Field(gt=0)] | None = None
    ideal_rate_per_h: Annotated[float, Field(gt=0)] | None = None
    code: Annotated[int, Field(ge=0)] | None = None  # what a PLC register reports instead of the name

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


def _time_input(v: Any) -> Any:
    # pydantic takes a number as seconds after midnight, so an unquoted 14:00 (YAML 1.1 base 60: 840)
    # would silently become 00:14.
    if isinstance(v, bool) or not isinstance(v, int | float):
        return v
    if isinstance(v, Sexagesimal):
        quoted = re.sub(r"^[-+]?(\d)(?=:)", r"0\1", v.text)  # "6:00" is not a time either, "06:00" is
        raise ValueError(f'got the number {int(v)} (YAML read {v.text} as a base-60 number); quote it: "{quoted}"')
    raise ValueError(f'got the number {v}; write a time as "HH:MM" in quotes')


LocalTime = Annotated[time, BeforeValidator(_time_input)]

_DAY_S = 86400


def _seconds(t: time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


def _length(start: time, end: time) -> int:
    """Seconds from `start` to `end`; an `end` at or before `start` is on the next day (as in the engine)."""
    return (_seconds(end) - _seconds(start)) % _DAY_S or _DAY_S


def _clock(s: int) -> str:
    s %= _DAY_S
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}"


class Break(_Strict):
    start: LocalTime
    end: LocalTime
    name: str = "break"


class Shift(_Strict):
    """A recurring shift: starts on each listed weekday at `start` local time; `end` <= `start` means
    the shift ends the next day (night shift)."""

    name: str
    start: LocalTime
    end: LocalTime
    days: list[Weekday] = Field(default_factory=lambda: list(ALL_DAYS))
    breaks: list[Break] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Shift:
        problems: list[tuple[FieldPath, str]] = []
        if not self.days:
            problems.append((("days",), "no weekday: the shift would never start; list the days it starts on "
                                        "(mon..sun), or leave days out for every day"))
        # The engine clips a break to its shift: a break outside it would silently be no break at all,
        # a reversed one (10:30-10:00) would run to the shift's end.
        start, length = _seconds(self.start), _length(self.start, self.end)
        for i, b in enumerate(self.breaks):
            offset = (_seconds(b.start) - start) % _DAY_S
            if offset + _length(b.start, b.end) > length:
                problems.append((("breaks", i), f"{_clock(_seconds(b.start))}-{_clock(_seconds(b.end))} is not "
                                                f"inside the shift {_clock(start)}-{_clock(_seconds(self.end))}; "
                                                "a break lies within its shift (one of a night shift may cross "
                                                "midnight)"))
        raise_problems(problems)
        return self


class CalendarException(_Strict):
    """A date whose shifts are cancelled (`holiday`) or replaced by the listed shifts (`replace`)."""

    date: date
    kind: Literal["holiday", "replace"] = "holiday"
    shifts: list[Shift] = Field(default_factory=list)

    @model_validator(mode="after")
    def _holiday_has_no_shifts(self) -> CalendarException:
        if self.kind == "holiday" and self.shifts:
            raise FieldProblems([(("shifts",), "a 'holiday' cancels the day's shifts, these would be ignored; "
                                               "set kind: replace to work these shifts that day")])
        return self


class Calendar(_Strict):
    timezone: str
    shifts: list[Shift]
    exceptions: list[CalendarException] = Field(default_factory=list)

    @field_validator("exceptions")
    @classmethod
    def _one_exception_per_date(cls, v: list[CalendarException]) -> list[CalendarException]:
        # Two exceptions for one date would leave it to list order which one holds.
        seen: dict[date, int] = {}
        for i, exc in enumerate(v):
            if exc.date in seen:
                raise ValueError(f"item {i}: date {exc.date.isoformat()} already has an exception (item "
                                 f"{seen[exc.date]}); one exception per date: a 'replace' lists all of that "
                                 "day's shifts, a 'holiday' cancels them")
            seen[exc.date] = i
        return v

    @model_validator(mode="after")
    def _some_production(self) -> Calendar:
        # Without shifts only a 'replace' exception gives production time (a machine run on given dates).
        if not self.shifts and not any(exc.kind == "replace" and exc.shifts for exc in self.exceptions):
            raise FieldProblems([(("shifts",), "no shifts: every hour would be unscheduled, its machines would "
                                               "never have production time; list the recurring shifts")])
        return self

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            best = did_you_mean(v, available_timezones(), cutoff=0.8)
            hint = f"did you mean {best!r}?" if best else "e.g. 'Europe/Berlin', 'UTC'"
            raise ValueError(f"unknown IANA timezone {v!r} ({hint})") from exc
        return v


class MachineKind(StrEnum):
    discrete = "discrete"
    rate = "rate"


class Machine(_Strict):
    id: Id
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
        problems: list[tuple[FieldPath, str]] = []
        if not self.products:
            problems.append((("products",), "at least one product with its ideal speed is needed"))
        if self.default_product is not None and self.default_product not in self.products:
            problems.append((("default_product",),
                             f"{self.default_product!r} is not one of products {sorted(self.products)}"
                             + suggestion(self.default_product, self.products)))
        codes: dict[int, str] = {}
        for name, p in self.products.items():
            if self.kind is MachineKind.discrete and p.ideal_cycle_time_s is None:
                problems.append((("products", name, "ideal_cycle_time_s"),
                                 "a discrete machine needs ideal_cycle_time_s (seconds per unit), "
                                 "not ideal_rate_per_h; or set kind: rate"))
            if self.kind is MachineKind.rate and p.ideal_rate_per_h is None:
                problems.append((("products", name, "ideal_rate_per_h"),
                                 "a rate machine needs ideal_rate_per_h (units per hour), "
                                 "not ideal_cycle_time_s; or set kind: discrete"))
            if p.code is not None:
                # The PLC reports the code; two products with one code could not be told apart.
                if p.code in codes:
                    problems.append((("products", name, "code"),
                                     f"code {p.code} is already used by product {codes[p.code]!r}"))
                else:
                    codes[p.code] = name
        if self.state_source == "state_code" and self.state_table is None:
            problems.append((("state_table",), "state_source 'state_code' (the default) needs state_table, "
                                               "a key of state_tables; or set state_source: run_bit or counts"))
        raise_problems(problems)
        return self

    @property
    def first_product(self) -> str:
        return self.default_product or next(iter(self.products))


class Line(_Strict):
    id: Id
    name: str | None = None
    area: Id = "default"
    constraint: str | None = None
    machines: list[Machine]

    @model_validator(mode="after")
    def _constraint(self) -> Line:
        ids = [m.id for m in self.machines]
        if not ids:
            raise FieldProblems([(("machines",), "no machines: a line needs at least one")])
        if self.constraint is not None and self.constraint not in ids:
            raise FieldProblems([(("constraint",), _constraint_message(self.constraint, ids))])
        return self


class Policies(_Strict):
    microstop_threshold_s: Annotated[float, Field(ge=0)] = 120.0
    microstops_as: Literal["performance", "availability"] = "performance"
    unknown_policy: Literal["include", "exclude"] = "include"
    stale_after_s: Annotated[float, Field(gt=0)] | None = None
    allowed_lateness_s: Annotated[float, Field(ge=0)] = 300.0
    max_clock_skew_s: Annotated[float, Field(ge=0)] = 60.0


class Site(_Strict):
    id: Id
    name: str | None = None
    timezone: str = "UTC"

    _tz = field_validator("timezone")(Calendar._tz.__func__)  # type: ignore[attr-defined]


class RollingWindow(_Strict):
    name: Id  # a segment of the result topic `.../_oee/{window}` and a value of the API's `window`
    seconds: Annotated[float, Field(gt=0)]


# The calendar windows the engine emits besides the rolling ones (in its window-kind order), and the
# names the API adds (week, range): no rolling window may take them.
CALENDAR_WINDOWS = ("shift", "day", "hour")
RESERVED_WINDOWS = (*CALENDAR_WINDOWS, "week", "range")


def _default_rolling() -> list[RollingWindow]:
    return [
        RollingWindow(name="15m", seconds=900),
        RollingWindow(name="1h", seconds=3600),
        RollingWindow(name="8h", seconds=8 * 3600),
        RollingWindow(name="24h", seconds=24 * 3600),
    ]


def _state_code(v: Any) -> Any:
    # pydantic would also take 5.0, "5.0", " 5" or true as a code and merge it with the real one.
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and re.fullmatch(r"-?[0-9]+", v):
        return int(v)
    raise ValueError(f"{v!r} is not a whole number")


StateCodeKey = Annotated[int, BeforeValidator(_state_code), Field(ge=0)]


class Plant(_Strict):
    site: Site
    policies: Policies = Field(default_factory=Policies)
    rolling_windows: list[RollingWindow] = Field(default_factory=_default_rolling)
    calendars: dict[str, Calendar]
    state_tables: dict[str, dict[StateCodeKey, StateCode]] = Field(default_factory=dict)
    lines: list[Line]

    @field_validator("rolling_windows")
    @classmethod
    def _window_names(cls, v: list[RollingWindow]) -> list[RollingWindow]:
        problems: list[tuple[FieldPath, str]] = []
        seen: dict[str, int] = {}
        for i, w in enumerate(v):
            if w.name in RESERVED_WINDOWS:
                problems.append(((i, "name"), f"{w.name!r} is the name of a calendar window ("
                                              f"{', '.join(RESERVED_WINDOWS)}); choose another, e.g. '8h'"))
            elif w.name in seen:
                problems.append(((i, "name"), f"{w.name!r} is already the name of rolling_windows.{seen[w.name]}; "
                                              "results of both would be stored as one window"))
            else:
                seen[w.name] = i
        raise_problems(problems)
        return v

    @model_validator(mode="after")
    def _refs(self) -> Plant:
        lines = [(line.id, line.constraint, [(m.id, m.calendar, m.state_table) for m in line.machines])
                 for line in self.lines]
        problems = reference_problems(lines, list(self.calendars), list(self.state_tables))
        for li, line in enumerate(self.lines):
            for mi, m in enumerate(line.machines):
                if m.state_source == "state_code" and m.state_table is not None \
                        and self.state_tables.get(m.state_table) == {}:
                    problems.append((("lines", li, "machines", mi, "state_table"),
                                     f"state_tables.{m.state_table} has no codes: every state would be unmapped "
                                     "and the machine's time unknown; list the PLC's codes in it"))
        raise_problems(problems)
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

    @classmethod
    def raw_problems(cls, data: Mapping[str, Any]) -> list[tuple[FieldPath, str]]:
        """The checks of `_refs` on the raw YAML, run by `validate_model` when validation fails: pydantic
        checks the plant only once every line is valid, and these problems should not wait for that."""
        return _raw_references(data)


def _constraint_message(constraint: str, ids: list[str]) -> str:
    return f"{constraint!r} is not a machine of this line; allowed: {ids}{suggestion(constraint, ids)}"


LineRefs = tuple[Any, Any, Sequence[tuple[Any, Any, Any]]]  # (id, constraint, [(machine id, calendar, table)])


def reference_problems(lines: Sequence[LineRefs], calendars: list[str],
                       state_tables: list[Any]) -> list[tuple[FieldPath, str]]:
    """Ids used twice and references to things not defined, from the ids and names alone.

    Also run on the raw YAML when validation fails (`_raw_references`): pydantic checks a line or the
    plant only once everything inside it is valid, and these problems should not wait for that.
    """
    problems: list[tuple[FieldPath, str]] = []
    seen: dict[tuple[str, str], str] = {}

    def unique(what: str, ident: Any, where: FieldPath) -> None:
        if not isinstance(ident, str):
            return
        if (what, ident) in seen:
            problems.append(((*where, "id"), f"{what} id {ident!r} is already used by {seen[what, ident]}"))
        else:
            seen[what, ident] = ".".join(map(str, where))

    for li, (line_id, _, _) in enumerate(lines):
        unique("line", line_id, ("lines", li))
    for li, (_, constraint, machines) in enumerate(lines):
        ids = [mid for mid, _, _ in machines if isinstance(mid, str)]
        if isinstance(constraint, str) and constraint not in ids:
            problems.append((("lines", li, "constraint"), _constraint_message(constraint, ids)))
        for mi, (mid, calendar, table) in enumerate(machines):
            where: FieldPath = ("lines", li, "machines", mi)
            unique("machine", mid, where)
            if isinstance(calendar, str) and calendar not in calendars:
                problems.append(((*where, "calendar"), f"{calendar!r} is not defined; allowed: "
                                 f"{sorted(calendars)}{suggestion(calendar, calendars)}"))
            if isinstance(table, str) and table not in state_tables:
                names = [str(t) for t in state_tables]
                problems.append(((*where, "state_table"), f"{table!r} is not defined; allowed: "
                                 f"{sorted(names)}{suggestion(table, names)}"))
    return problems


def _raw_references(data: Mapping[str, Any]) -> list[tuple[FieldPath, str]]:
    raw_lines = data.get("lines")
    if not isinstance(raw_lines, list):
        return []
    calendars, tables = data.get("calendars"), data.get("state_tables")
    lines: list[LineRefs] = []
    for line in raw_lines:
        line = line if isinstance(line, Mapping) else {}
        machines = line.get("machines")
        refs = [(m.get("id"), m.get("calendar", "default"), m.get("state_table")) if isinstance(m, Mapping)
                else (None, None, None) for m in (machines if isinstance(machines, list) else [])]
        lines.append((line.get("id"), line.get("constraint"), refs))
    cal_names = list(calendars) if isinstance(calendars, Mapping) else None
    table_names = list(tables) if isinstance(tables, Mapping) else ([] if tables is None else None)
    problems = reference_problems(lines, cal_names or [], table_names or [])
    # A section that is itself invalid gives no names; references into it would only repeat that.
    skip = {field for field, names in (("calendar", cal_names), ("state_table", table_names)) if names is None}
    return [p for p in problems if p[0][-1] not in skip]


def raw_machine_ids(data: Any) -> list[str] | None:
    """The machine ids (`lines[].machines[].id`) of a plant file that need not be valid, from its parsed YAML.

    None unless every machine's id can be read as text: with one of them unknown, a connector's machine
    that is not in the list might still be that one.
    """
    lines = data.get("lines") if isinstance(data, Mapping) else None
    if not isinstance(lines, list):
        return None
    ids: list[str] = []
    for line in lines:
        if not isinstance(line, Mapping):
            return None
        machines = line.get("machines")
        if machines is None:  # none given: an error of its own, but this line has no machines
            continue
        if not isinstance(machines, list):
            return None
        for m in machines:
            mid = m.get("id") if isinstance(m, Mapping) else None
            if not isinstance(mid, str):
                return None
            ids.append(mid)
    return ids


def load_plant_data(path: Path | str) -> tuple[Any, Plant | None, list[str]]:
    """(the parsed YAML, the plant, every problem found in the file); ConfigError when it cannot be parsed
    at all.

    The file is usable only without problems; the plant is still returned after a problem that leaves it
    valid (a key given twice), so that the connectors can be checked against it in the same run. Without a
    plant, the parsed YAML still tells which machines there are (`raw_machine_ids`).
    """
    data, problems = load_yaml(path)
    plant, more = validate_model(Plant, data, path)
    return data, plant, problems + more


def load_plant_file(path: Path | str) -> tuple[Plant | None, list[str]]:
    """(plant, every problem found in the file); ConfigError when it cannot be parsed at all (see
    `load_plant_data`)."""
    _, plant, problems = load_plant_data(path)
    return plant, problems


def load_plant(path: Path | str) -> Plant:
    plant, problems = load_plant_file(path)
    if plant is None or problems:
        raise ConfigError(*problems)
    return plant


# ------------------------------------------------------------------------------------------ warnings

_WEEK_S = 7 * _DAY_S


def _week_spans(shift: Shift) -> list[tuple[int, int]]:
    """[start, end) of each occurrence in seconds after Monday 00:00 (may run past the week's end)."""
    start, length = _seconds(shift.start), _length(shift.start, shift.end)
    return [(ALL_DAYS.index(d) * _DAY_S + start, ALL_DAYS.index(d) * _DAY_S + start + length) for d in shift.days]


def _overlap(a: Shift, b: Shift) -> tuple[int, int] | None:
    """The first time both shifts are on, as (start, end) in seconds of the week, or None."""
    found: list[tuple[int, int]] = []
    for a0, a1 in _week_spans(a):
        for b0, b1 in _week_spans(b):
            for wrap in (-_WEEK_S, 0, _WEEK_S):  # Sunday night runs into Monday
                lo, hi = max(a0, b0 + wrap), min(a1, b1 + wrap)
                if hi > lo:
                    found.append((lo % _WEEK_S, lo % _WEEK_S + hi - lo))
    return min(found) if found else None


def _day_overlap(a: Shift, b: Shift) -> tuple[int, int] | None:
    """Where two shifts starting on the same day are both on, in seconds after that day's midnight."""
    a0, b0 = _seconds(a.start), _seconds(b.start)
    lo, hi = max(a0, b0), min(a0 + _length(a.start, a.end), b0 + _length(b.start, b.end))
    return (lo, hi) if hi > lo else None


_OVERLAP_EFFECT = "time covered twice counts once, a break only where every covering shift has one"


def plant_warnings(plant: Plant, source: Path | str) -> list[str]:
    """Valid but probably unintended: shifts of one calendar (or of one replaced day) that overlap or share
    a name on a day; a state table a machine does not read."""
    out: list[str] = []
    for cname, cal in plant.calendars.items():
        for j, b in enumerate(cal.shifts):
            for i, a in enumerate(cal.shifts[:j]):
                where = f"{source}: calendars.{cname}.shifts.{j}"
                common = [d for d in ALL_DAYS if d in a.days and d in b.days]
                if a.name == b.name and common:
                    out.append(f"{where}.name: {b.name!r} is also the name of shifts.{i}, starting on the same "
                               f"day ({', '.join(common)}); shift results and reports cannot tell them apart")
                span = _overlap(a, b)
                if span is not None:
                    day = ALL_DAYS[span[0] // _DAY_S]
                    out.append(f"{where}: shift {b.name!r} overlaps shift {a.name!r} (shifts.{i}) on {day} "
                               f"{_clock(span[0])}-{_clock(span[1])}; {_OVERLAP_EFFECT}")
        for k, exc in enumerate(cal.exceptions):
            # A replaced day's shifts all start that day; their `days` do not apply.
            for j, b in enumerate(exc.shifts):
                for i, a in enumerate(exc.shifts[:j]):
                    where = f"{source}: calendars.{cname}.exceptions.{k}.shifts.{j}"
                    if a.name == b.name:
                        out.append(f"{where}.name: {b.name!r} is also the name of shifts.{i} on "
                                   f"{exc.date.isoformat()}; shift results and reports cannot tell them apart")
                    day_span = _day_overlap(a, b)
                    if day_span is not None:
                        out.append(f"{where}: shift {b.name!r} overlaps shift {a.name!r} (shifts.{i}) on "
                                   f"{exc.date.isoformat()} {_clock(day_span[0])}-{_clock(day_span[1])}; "
                                   f"{_OVERLAP_EFFECT}")
    for li, line in enumerate(plant.lines):
        for mi, m in enumerate(line.machines):
            if m.state_table is not None and m.state_source != "state_code":
                signal = "run" if m.state_source == "run_bit" else "total"
                out.append(f"{source}: lines.{li}.machines.{mi}.state_table: not used with state_source: "
                           f"{m.state_source} (the state comes from the {signal!r} signal); remove it, or set "
                           "state_source: state_code to map the 'state' signal through it")
    return out
