"""The plant model: site → lines → machines, state tables, products and shift calendars.

Loaded from YAML and validated once with pydantic. Every error names the file, the field path and what
is allowed, because the people who write these files are integration engineers on a plant network, not
Python developers.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import orjson
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """An invalid configuration: each problem is one line naming the file, the field and what is allowed.

    Raised with every problem found, so a user fixes a file in one round instead of one error per run.
    """

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__(*problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return f"{len(self.problems)} problems:\n" + "\n".join(f"  {p}" for p in self.problems)


FieldPath = tuple[str | int, ...]


class FieldProblems(ValueError):
    """What a model validator found, each problem at a field path below the model.

    Paths are tuples so that a key containing '-' or '.' (product `6063-T5`) stays one part; the
    formatter reads them from the error's context instead of parsing the message.
    """

    def __init__(self, problems: Iterable[tuple[FieldPath, str]]) -> None:
        self.problems = [(tuple(str(p) for p in path), msg) for path, msg in problems]
        super().__init__("; ".join(f"{'.'.join(path)}: {msg}" for path, msg in self.problems))


def _raise_problems(problems: list[tuple[FieldPath, str]]) -> None:
    if problems:
        raise FieldProblems(problems)


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The closest of `choices` to a misspelt `word` (case differences count as close), or None."""
    options = list(choices)
    for c in options:
        if c.lower() == word.lower():
            return c
    close = difflib.get_close_matches(word, options, n=1, cutoff=cutoff)
    return close[0] if close else None


def _suggestion(word: str, choices: Iterable[str]) -> str:
    best = did_you_mean(word, choices)
    return f"; did you mean {best!r}?" if best is not None else ""


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


class Sexagesimal(int):
    """An integer YAML 1.1 read in base 60 (`14:00` -> 840): nearly always a time someone forgot to quote,
    so the text is kept for the error message."""

    text: str

    def __new__(cls, value: int, text: str) -> Sexagesimal:
        obj = super().__new__(cls, value)
        obj.text = text
        return obj


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
            best = did_you_mean(v, available_timezones(), cutoff=0.8)
            hint = f"did you mean {best!r}?" if best else "e.g. 'Europe/Berlin', 'UTC'"
            raise ValueError(f"unknown IANA timezone {v!r} ({hint})") from exc
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
        problems: list[tuple[FieldPath, str]] = []
        if not self.products:
            problems.append((("products",), "at least one product with its ideal speed is needed"))
        if self.default_product is not None and self.default_product not in self.products:
            problems.append((("default_product",),
                             f"{self.default_product!r} is not one of products {sorted(self.products)}"
                             + _suggestion(self.default_product, self.products)))
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
        _raise_problems(problems)
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
        lines = [(line.id, line.constraint, [(m.id, m.calendar, m.state_table) for m in line.machines])
                 for line in self.lines]
        _raise_problems(reference_problems(lines, list(self.calendars), list(self.state_tables)))
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




def _constraint_message(constraint: str, ids: list[str]) -> str:
    return f"{constraint!r} is not a machine of this line; allowed: {ids}{_suggestion(constraint, ids)}"


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
                                 f"{sorted(calendars)}{_suggestion(calendar, calendars)}"))
            if isinstance(table, str) and table not in state_tables:
                names = [str(t) for t in state_tables]
                problems.append(((*where, "state_table"), f"{table!r} is not defined; allowed: "
                                 f"{sorted(names)}{_suggestion(table, names)}"))
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


# ------------------------------------------------------------------------------------------ YAML files


class _Loader(yaml.SafeLoader):
    """SafeLoader that remembers the text of base-60 integers (see `Sexagesimal`)."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value: int = super().construct_yaml_int(node)
        return Sexagesimal(value, node.value) if ":" in str(node.value) else value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _duplicate_keys(loader: _Loader, root: yaml.Node, source: Path | str) -> list[str]:
    """Keys defined twice in one mapping; YAML itself keeps the last one silently."""
    problems: list[str] = []
    visited: set[int] = set()

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if id(node) in visited:  # an alias is walked once, where it is defined
            return
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                    continue
                if isinstance(key_node, yaml.ScalarNode):
                    key = loader.construct_object(key_node)
                    label = str(key)
                else:
                    key, label = id(key_node), "(complex key)"
                line = key_node.start_mark.line + 1
                if key in first:
                    problems.append(f"{source}: {'.'.join((*path, label))}: defined twice "
                                    f"(lines {first[key]}, {line}); YAML would keep only the last")
                else:
                    first[key] = line
                walk(value_node, (*path, label))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, str(i)))

    walk(root, ())
    return problems


def _yaml_error(source: Path | str, exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = exc.problem or "syntax error"
        if exc.context:
            ctx = exc.context
            if exc.context_mark is not None and exc.context_mark.line != mark.line:
                ctx += f" started on line {exc.context_mark.line + 1}"
            what = f"{what} ({ctx})"
        return f"{source}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {what}"
    return f"{source}: not valid YAML: {exc}"


def load_yaml(path: Path | str) -> tuple[Any, list[str]]:
    """Parse one YAML file: (data, problems that still leave data usable, e.g. duplicate keys).

    Raises ConfigError when there is nothing to validate: a missing or unreadable file, a syntax error.
    An empty file gives None.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder, not a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read: {exc.strerror}") from None
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, []
        problems = _duplicate_keys(loader, root, p)
        return loader.construct_document(root), problems
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(p, exc)) from None
    finally:
        loader.dispose()


def read_yaml(path: Path | str) -> Any:
    """The parsed file; ConfigError for anything `load_yaml` reports."""
    data, problems = load_yaml(path)
    if problems:
        raise ConfigError(*problems)
    return data


# ------------------------------------------------------------------------------------------ error messages

# a cross-field check of another module that raises "field.path: message"
_FIELD_MSG = re.compile(r"^(?P<field>[A-Za-z_][\w.]*): (?P<msg>.*)$", re.DOTALL)

_READABLE_PATTERNS = {
    r"^[A-Za-z0-9_.-]+$": "letters, digits, '_', '.' and '-' only",
    r"^[A-Za-z0-9][A-Za-z0-9_.-]*$": "letters, digits, '_', '.' and '-', starting with a letter or digit",
}


def _field_types(tp: Any) -> list[Any]:
    """The alternatives of an annotation, without Annotated and Optional wrappers."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _field_types(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [t for arg in get_args(tp) for t in _field_types(arg)]
    return [tp]


def model_at(model: type[BaseModel], loc: Sequence[str]) -> type[BaseModel] | None:
    """The model class that validates the mapping at `loc` below `model` (for listing allowed keys)."""
    current: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for tp in (t for c in current for t in _field_types(c)):
            origin = get_origin(tp)
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                for name, field in tp.model_fields.items():
                    if part in (name, field.alias):
                        nxt.append(field.annotation)
            elif origin in (list, Sequence) and part.isdigit():
                nxt.append(get_args(tp)[0])
            elif origin in (dict, Mapping):
                nxt.append(get_args(tp)[1])
        current = nxt
    found = [t for c in current for t in _field_types(c) if isinstance(t, type) and issubclass(t, BaseModel)]
    return found[0] if found else None


def allowed_keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"{value} (true/false)"
    if isinstance(value, Sexagesimal):
        return f"the number {int(value)}"
    if isinstance(value, int | float):
        return f"the number {value}"
    return repr(value)


def _show(value: Any) -> str:
    return str(int(value)) if isinstance(value, Sexagesimal) else repr(value)


def _message(err: Mapping[str, Any], loc: list[str], model: type[BaseModel] | None) -> str:
    kind: str = err["type"]
    raw: str = err["msg"]
    value = err.get("input")
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    msg = raw
    if kind == "value_error":
        msg = raw.removeprefix("Value error, ")
    elif kind == "assertion_error":
        msg = raw.removeprefix("Assertion failed, ")
    elif kind == "extra_forbidden":
        sub = model_at(model, loc[:-1]) if model is not None else None
        if sub is None:
            msg = "unknown key (check the spelling; see the docs for allowed keys)"
        else:
            keys = allowed_keys(sub)
            best = did_you_mean(loc[-1], keys)
            msg = f"unknown key; did you mean {best!r}?" if best else f"unknown key; allowed: {', '.join(keys)}"
    elif kind == "missing":
        msg = "required field is missing"
    elif kind in ("float_parsing", "float_type"):
        msg = f"{_show(value)} is not a number"
    elif kind in ("int_parsing", "int_type", "int_from_float"):
        msg = f"{_show(value)} is not a whole number"
    elif kind in ("bool_parsing", "bool_type"):
        msg = f"{_show(value)} is not true or false"
    elif kind in ("time_parsing", "time_type"):
        msg = f'{_show(value)} is not a time; write "HH:MM" or "HH:MM:SS" in quotes'
    elif kind.startswith("date_"):
        msg = f"{_show(value)} is not a date; write YYYY-MM-DD"
    elif kind in ("string_type", "string_sub_type"):
        msg = f"expected text, got {_describe(value)}"
    elif kind in ("dict_type", "model_type", "model_attributes_type", "mapping_type"):
        msg = f"expected a mapping (key: value), got {_describe(value)}"
    elif kind in ("list_type", "tuple_type", "iterable_type"):
        msg = f"expected a list, got {_describe(value)}"
    elif kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", ""))
        msg = f"{_show(value)} is not allowed; expected {expected}"
        if isinstance(value, str):
            msg += _suggestion(value, re.findall(r"'([^']*)'", expected))
    elif kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        msg = f"{_show(value)} is not allowed: {_READABLE_PATTERNS.get(pattern, f'must match {pattern}')}"
    elif raw.startswith("Input should be ") and not isinstance(value, Mapping | list):
        msg = f"{_show(value)} is not allowed; it should be {raw.removeprefix('Input should be ')}"
    if isinstance(value, Sexagesimal) and "base-60" not in msg:
        msg += f' (YAML read {value.text} as a base-60 number; quote it: "{value.text}")'
    return msg


def validation_problems(source: Path | str, exc: ValidationError,
                        model: type[BaseModel] | None = None) -> list[str]:
    """One line per problem: `file: field.path: message`, with the bad value and what is allowed.

    A model validator reports its problems at their own fields (`FieldProblems`, or "field: message"
    from older validators) rather than at the model that ran the check.
    """
    out: list[str] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key_error = bool(loc) and loc[-1] == "[key]"
        if key_error:
            loc = loc[:-1]
        found = (err.get("ctx") or {}).get("error")
        if isinstance(found, FieldProblems):
            out += [f"{source}: {'.'.join(loc + list(sub))}: {msg}" for sub, msg in found.problems]
            continue
        msg = _message(err, loc, model)
        m = _FIELD_MSG.match(msg) if err["type"] == "value_error" else None
        if m:
            loc.append(m["field"])
            msg = m["msg"]
        if key_error:
            msg = f"the key {msg}"
        out.append(f"{source}: {'.'.join(loc) or '(top level)'}: {msg}")
    return list(dict.fromkeys(out))


def format_validation_error(path: Path | str, exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    return "\n".join(validation_problems(path, exc, model))


def _top_level_problem(model: type[BaseModel], data: Any, source: Path | str) -> str | None:
    if data is None:
        required = [field.alias or name for name, field in model.model_fields.items() if field.is_required()]
        return f"{source}: the file is empty; expected a mapping with {', '.join(required)}, ..."
    if not isinstance(data, Mapping):
        return f"{source}: expected a mapping (key: value) at the top level, got {_describe(data)}"
    return None


def validate_model(model: type[M], data: Any, source: Path | str) -> tuple[M | None, list[str]]:
    """(the model, []) or (None, every problem found)."""
    top = _top_level_problem(model, data, source)
    if top is not None:
        return None, [top]
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        problems = validation_problems(source, exc, model)
        if model is Plant:
            # Plant-wide checks run only once every line is valid; these must not wait for that.
            problems += [f"{source}: {'.'.join(map(str, path))}: {msg}" for path, msg in _raw_references(data)]
        return None, list(dict.fromkeys(problems))


def parse_model(model: type[M], data: Any, source: Path | str) -> M:
    result, problems = validate_model(model, data, source)
    if result is None:
        raise ConfigError(*problems)
    return result


def load_plant_file(path: Path | str) -> tuple[Plant | None, list[str]]:
    """(plant, every problem found in the file); ConfigError when it cannot be parsed at all.

    The file is usable only without problems; the plant is still returned after a problem that leaves it
    valid (a key given twice), so that the connectors can be checked against it in the same run.
    """
    data, problems = load_yaml(path)
    plant, more = validate_model(Plant, data, path)
    return plant, problems + more


def load_plant(path: Path | str) -> Plant:
    plant, problems = load_plant_file(path)
    if plant is None or problems:
        raise ConfigError(*problems)
    return plant


# ------------------------------------------------------------------------------------------ warnings

_DAY_S = 86400
_WEEK_S = 7 * _DAY_S


def _seconds(t: time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


def _clock(s: int) -> str:
    s %= _DAY_S
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}"


def _week_spans(shift: Shift) -> list[tuple[int, int]]:
    """[start, end) of each occurrence in seconds after Monday 00:00 (may run past the week's end)."""
    start = _seconds(shift.start)
    length = (_seconds(shift.end) - start) % _DAY_S or _DAY_S
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


def plant_warnings(plant: Plant, source: Path | str) -> list[str]:
    """Valid but probably unintended: shifts of one calendar that overlap or share a name on a day."""
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
                               f"{_clock(span[0])}-{_clock(span[1])}; time covered twice counts once, "
                               "a break only where every covering shift has one")
    return out
