"""``${VAR}`` / ``${VAR:-default}`` expansion in configuration strings (docker-compose / shell style).

    ${VAR}            value of VAR; an error if VAR is not set
    ${VAR:-default}   value of VAR, or `default` when VAR is unset or empty
    ${VAR-default}    value of VAR, or `default` only when VAR is unset
    $${               a literal "${"

Expansion is applied to string values after YAML parsing (never to the YAML text), so a value can not
inject YAML structure. Defaults are literal text (no nested expansion).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

_PATTERN = re.compile(
    r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}|\$\{(?P<bad>[^}]*)\}?"
)


class EnvSubstError(ValueError):
    """A ``${...}`` reference that cannot be expanded; the message names the variable.

    From `expand_tree`, `problems` holds one "field.path: reason" per bad reference in the tree.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


def expand(text: str, env: Mapping[str, str] | None = None) -> str:
    environ: Mapping[str, str] = os.environ if env is None else env

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        if m.group("name") is None:
            raise EnvSubstError(
                f"malformed variable reference {m.group(0)!r}: use ${{NAME}} or ${{NAME:-default}}"
            )
        name, op, default = m.group("name"), m.group("op"), m.group("default")
        value = environ.get(name)
        if op == ":-":
            return value if value else default
        if op == "-":
            return value if value is not None else default
        if value is None:
            raise EnvSubstError(f"environment variable {name} is not set (give a default: ${{{name}:-value}})")
        return value

    return _PATTERN.sub(repl, text)


def expand_tree(data: Any, env: Mapping[str, str] | None = None, path: str = "") -> Any:
    """Expand every string in a YAML tree.

    Raises EnvSubstError naming every bad reference ('field.path: reason'), not only the first.
    """
    problems: list[str] = []
    out = _expand_tree(data, env, path, problems)
    if problems:
        raise EnvSubstError("; ".join(problems), problems)
    return out


def _expand_tree(data: Any, env: Mapping[str, str] | None, path: str, problems: list[str]) -> Any:
    if isinstance(data, str):
        try:
            return expand(data, env)
        except EnvSubstError as exc:
            problems.append(f"{path or '(top level)'}: {exc}")
            return data
    if isinstance(data, Mapping):
        return {k: _expand_tree(v, env, f"{path}.{k}" if path else str(k), problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_tree(v, env, f"{path}.{i}" if path else str(i), problems) for i, v in enumerate(data)]
    return data
