"""Configuration files: YAML read strictly, validated into pydantic models, every problem one line.

The plant model (`config.py`), the connector files (`connectors/config.py`) and the simulator scenarios
(`simulators/scenario.py`) are read through here, so that they report problems alike: a key given twice
or a syntax error with its line, and each validation error as `file: field.path: message` with the value
it got, what is allowed and, for a misspelling, the closest allowed name. The people who write these files
are integration engineers on a plant network, not Python developers.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

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


def raise_problems(problems: list[tuple[FieldPath, str]]) -> None:
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


def suggestion(word: str, choices: Iterable[str]) -> str:
    best = did_you_mean(word, choices)
    return f"; did you mean {best!r}?" if best is not None else ""


class Sexagesimal(int):
    """An integer YAML 1.1 read in base 60 (`14:00` -> 840): nearly always a time someone forgot to quote,
    so the text is kept for the error message."""

    text: str

    def __new__(cls, value: int, text: str) -> Sexagesimal:
        obj = super().__new__(cls, value)
        obj.text = text
        return obj



# ------------------------------------------------------------------------------------------ YAML files


class Unreadable:
    """A scalar that YAML recognises by its form but cannot build (the date 2026-02-30).

    `load_yaml` reports it once, with its line. It is no value of any type, so every field refuses it, and
    validation leaves those refusals out of its messages.
    """

    def __init__(self, text: str, problem: str) -> None:
        self.text = text
        self.problem = problem

    def __repr__(self) -> str:
        return self.text


_STR = "tag:yaml.org,2002:str"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
# YAML 1.1 reads the key `yes` (or `on`) as true, equal to 1, and `5.0` as a float, equal to 5; no mapping
# of ours has such keys, so they stay the text that was written.
_KEY_AS_WRITTEN = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")


class _Loader(yaml.SafeLoader):
    """SafeLoader that remembers the text of base-60 integers (see `Sexagesimal`) and keeps an impossible
    date as text (see `Unreadable`) instead of raising a bare ValueError."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value: int = super().construct_yaml_int(node)
        return Sexagesimal(value, node.value) if ":" in str(node.value) else value

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:  # datetime's own words: "day is out of range for month"
            match = self.timestamp_regexp.match(str(node.value))
            what = "date and time" if match and match.group("hour") else "date"
            return Unreadable(str(node.value), f"{node.value} is not a {what}: {exc}")


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor(_TIMESTAMP, _Loader.construct_yaml_timestamp)


def _written(node: yaml.ScalarNode) -> str:
    quote = node.style if node.style in ("'", '"') else ""
    return f"{quote}{node.value}{quote}"


def _same_key(key: Any) -> Any:
    # `5` and `"5"` are two keys to YAML but one to the models: state codes are read as numbers, product
    # names as text, so one of them would silently replace the other.
    if isinstance(key, str) and key.isdigit() and str(int(key)) == key:
        return int(key)
    return key


def _node_problems(loader: _Loader, root: yaml.Node, source: Path | str) -> list[str]:
    """Keys defined twice in one mapping (YAML itself keeps the last one silently) and dates that do not
    exist; keys that YAML would read as true/false or a fraction are kept as written (`_KEY_AS_WRITTEN`)."""
    problems: list[str] = []
    visited: set[int] = set()

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if id(node) in visited:  # an alias is walked once, where it is defined
            return
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, tuple[int, str]] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                    continue
                if isinstance(key_node, yaml.ScalarNode):
                    if key_node.tag in _KEY_AS_WRITTEN:
                        key_node.tag = _STR
                    key = _same_key(loader.construct_object(key_node))
                    label, written = str(key_node.value), _written(key_node)
                else:
                    key, label, written = id(key_node), "(complex key)", ""
                line = key_node.start_mark.line + 1
                if key in first:
                    line0, written0 = first[key]
                    keep = ("YAML would keep only the last" if written == written0 else
                            f"{written0} and {written} are one key here, only the last would be kept")
                    problems.append(f"{source}: {'.'.join((*path, label))}: defined twice "
                                    f"(lines {line0}, {line}); {keep}")
                else:
                    first[key] = (line, written)
                walk(value_node, (*path, label))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, str(i)))
        elif isinstance(node, yaml.ScalarNode) and node.tag == _TIMESTAMP:
            value = loader.construct_object(node)
            if isinstance(value, Unreadable):
                mark = node.start_mark
                problems.append(f"{source}: {'.'.join(path) or '(top level)'}: {value.problem} "
                                f"(line {mark.line + 1}, column {mark.column + 1})")

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
        problems = _node_problems(loader, root, p)
        return loader.construct_document(root), problems
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(p, exc)) from None
    except ValueError as exc:  # a constructor's own error; a timestamp's is turned into a problem above
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
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
            msg += suggestion(value, re.findall(r"'([^']*)'", expected))
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
        if isinstance(err.get("input"), Unreadable):  # `load_yaml` reported it, with its line
            continue
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
        # A model's checks across its parts (the plant's references) run only once every part is valid;
        # a model with `raw_problems` runs them on the raw data too, so that they do not wait for that.
        raw_problems = getattr(model, "raw_problems", None)
        if raw_problems is not None:
            problems += [f"{source}: {'.'.join(map(str, path))}: {msg}" for path, msg in raw_problems(data)]
        return None, list(dict.fromkeys(problems))


def parse_model(model: type[M], data: Any, source: Path | str) -> M:
    result, problems = validate_model(model, data, source)
    if result is None:
        raise ConfigError(*problems)
    return result
