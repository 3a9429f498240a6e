"""``${VAR}`` / ``${VAR:-default}`` expansion in configuration strings (docker-compose / shell style).

    ${VAR}            value of VAR; an error if VAR is not set
    ${VAR:-default}   value of VAR, or `default` when VAR is unset or empty
    ${VAR-default}    value of VAR, or `default` only when VAR is unset
    $${               a literal "${"

Expansion is applied to string values after YAML parsing (never to the YAML text), so a value can not
inject YAML structure. Defaults are literal text (no nested expansion).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Mapping
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


def _raise(message: str) -> str:
    raise EnvSubstError(message)


def _expand(text: str, env: Mapping[str, str] | None, on_error: Callable[[str], str]) -> str:
    """`text` expanded; a reference that cannot be is replaced by what `on_error(reason)` returns."""
    environ: Mapping[str, str] = os.environ if env is None else env

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        if m.group("name") is None:
            return on_error(f"malformed variable reference {m.group(0)!r}: use ${{NAME}} or ${{NAME:-default}}")
        name, op, default = m.group("name"), m.group("op"), m.group("default")
        value = environ.get(name)
        if op == ":-":
            return value if value else default
        if op == "-":
            return value if value is not None else default
        if value is None:
            return on_error(f"environment variable {name} is not set (give a default: ${{{name}:-value}})")
        return value

    return _PATTERN.sub(repl, text)


def expand(text: str, env: Mapping[str, str] | None = None) -> str:
    return _expand(text, env, _raise)


def expand_tree(data: Any, env: Mapping[str, str] | None = None, path: str = "") -> Any:
    """Expand every string in a YAML tree.

    Raises EnvSubstError naming every bad reference ('field.path: reason'), not only the first.
    """
    out, problems = expand_tree_with_placeholders(data, env, path)
    if problems:
        lines = [f"{where or '(top level)'}: {reason}" for where, reason in problems]
        raise EnvSubstError("; ".join(lines), lines)
    return out


def expand_tree_with_placeholders(data: Any, env: Mapping[str, str] | None = None, path: str = "",
                                  first: int = 1) -> tuple[Any, list[tuple[str, str]]]:
    """Expand every string in a YAML tree; (the tree, [(field path, reason)] of every bad reference).

    A bad reference is replaced by a placeholder, a small whole number counting up from `first`, so that
    the rest of the file can still be validated: a number fits most fields (text, numbers, a URL's host or
    port), and each reference gets another one, so two unset machine ids do not look like one machine
    given twice. The caller reports the references and leaves out the validation errors the placeholders
    cause (see `connectors.config.validate_connector`).
    """
    problems: list[tuple[str, str]] = []
    numbers = itertools.count(first)

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, str):
            def on_error(reason: str) -> str:
                problems.append((where, reason))
                return str(next(numbers))

            return _expand(node, env, on_error)
        if isinstance(node, Mapping):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(node)]
        return node

    return walk(data, path), problems
