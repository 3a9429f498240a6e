"""Validate Grafana files against Grafana's schemas, without Grafana.

Dashboards: the dashboard model of grafana-foundation-sdk, which Grafana generates from the CUE schemas of its
dashboard kind and of every core panel plugin (options and field config). Pinned to the Grafana minor release
that deploy/docker-compose.yml runs (11.3). A dashboard is valid when

* every key survives a decode/encode round trip through the model: a key Grafana's schema does not know
  (a typo, an option of another panel type, an option of a newer Grafana) is dropped by the model and reported;
* every value has the type the schema declares, enums included (graphTooltip, variable refresh/sort, legend
  placement, colour modes, ...);
* every panel type is a core panel plugin the schema describes.

Provisioning files: no official schema is published, so `ProvisionedDatasources` / `ProvisionedDashboards` below
are written from Grafana's provisioning documentation ("Provision Grafana": data sources, dashboards) and
forbid unknown keys. Grafana expands `$VAR` / `${VAR}` in the values from its environment; so do we.
"""

from __future__ import annotations

import enum
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ------------------------------------------------------------------------------------------- dashboards


def _sdk() -> Any:
    from grafana_foundation_sdk.cog import runtime
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import dashboard

    register_default_plugins()
    return types.SimpleNamespace(runtime=runtime, encoder=JSONEncoder, dashboard=dashboard)


def _dropped(original: Any, back: Any, path: str) -> list[str]:
    out: list[str] = []
    if isinstance(original, dict) and isinstance(back, dict):
        for k, v in original.items():
            if k not in back:
                out.append(f"{path}/{k}: not in Grafana's schema (dropped by the model)")
            else:
                out += _dropped(v, back[k], f"{path}/{k}")
    elif isinstance(original, list) and isinstance(back, list):
        if len(original) != len(back):
            out.append(f"{path}: {len(original)} items, the model kept {len(back)}")
        for i, (a, b) in enumerate(zip(original, back, strict=False)):
            out += _dropped(a, b, f"{path}[{i}]")
    return out


def _check(value: Any, tp: Any, path: str, errors: list[str]) -> None:
    """`value` (as decoded by the SDK model) against the annotated type `tp` of its field."""
    if tp is Any or tp is object:
        # Panel options and custom field config are typed `object` in the panel model and decoded into the
        # panel plugin's own classes: check them against those.
        if type(value).__module__.startswith("grafana_foundation_sdk.models."):
            _check(value, type(value), path, errors)
        return
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return
        alts = [a for a in args if a is not type(None)]
        tried: list[list[str]] = []
        for alt in alts:
            sub: list[str] = []
            _check(value, alt, path, sub)
            if not sub:
                return
            tried.append(sub)
        own = [t for a, t in zip(alts, tried, strict=True) if isinstance(a, type) and type(value) is a]
        if len(alts) == 1 or own:
            errors += (own or tried)[0]
        else:
            errors.append(f"{path}: {value!r} is none of {tp}: " + "; ".join(e for t in tried for e in t))
        return
    if origin is Literal:
        if value not in args:
            errors.append(f"{path}: {value!r} is not one of {args}")
        return
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {value!r}")
            return
        for i, item in enumerate(value):
            _check(item, args[0] if args else Any, f"{path}[{i}]", errors)
        return
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object, got {value!r}")
            return
        for k, item in value.items():
            _check(item, args[1] if len(args) == 2 else Any, f"{path}/{k}", errors)
        return
    if not isinstance(tp, type):
        return  # a TypeVar or something exotic: not used by the dashboard model
    if issubclass(tp, enum.Enum):
        if not isinstance(value, tp) and value not in {e.value for e in tp}:
            errors.append(f"{path}: {value!r} is not a {tp.__name__} ({[e.value for e in tp]})")
        return
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, tp)
        if ok and hasattr(tp, "to_json"):
            try:
                hints = typing.get_type_hints(tp)
            except Exception:  # an SDK class whose annotations do not resolve: check its keys only
                hints = {}
            for name, field_tp in hints.items():
                if hasattr(value, name):
                    _check(getattr(value, name), field_tp, f"{path}.{name}", errors)
    if not ok:
        errors.append(f"{path}: expected {tp.__name__}, got {value!r}")


def validate_dashboard(doc: Mapping[str, Any]) -> list[str]:
    """Every way `doc` departs from Grafana's dashboard schema; empty when it is valid."""
    sdk = _sdk()
    errors: list[str] = []
    for p in doc.get("panels", []):
        if p.get("type") != "row" and sdk.runtime.panelcfg_config(p.get("type", "")) is None:
            errors.append(f"panel {p.get('title')!r}: {p.get('type')!r} is not a core panel plugin")
    model = sdk.dashboard.Dashboard.from_json(dict(doc))
    back = json.loads(json.dumps(model, cls=sdk.encoder))
    errors += _dropped(doc, back, "")
    _check(model, sdk.dashboard.Dashboard, "dashboard", errors)
    return errors


# ----------------------------------------------------------------------------------------- provisioning


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


SslMode = Literal["disable", "require", "verify-ca", "verify-full"]


class PostgresJsonData(_Strict):
    """jsonData of the PostgreSQL data source (Grafana docs: PostgreSQL data source, provisioning example)."""

    database: str
    sslmode: SslMode = "require"
    postgresVersion: int | None = None
    timescaledb: bool = False
    maxOpenConns: int | None = Field(None, ge=0)
    maxIdleConns: int | None = Field(None, ge=0)
    maxIdleConnsAuto: bool | None = None
    connMaxLifetime: int | None = Field(None, ge=0)
    timeInterval: str | None = Field(None, pattern=r"^\d+(ms|s|m|h|d|w|y)$")
    tlsAuth: bool | None = None
    tlsAuthWithCACert: bool | None = None
    tlsConfigurationMethod: Literal["file-path", "file-content"] | None = None
    tlsSkipVerify: bool | None = None
    sslRootCertFile: str | None = None
    sslCertFile: str | None = None
    sslKeyFile: str | None = None


class Datasource(_Strict):
    name: str
    type: str
    access: Literal["proxy", "direct"] = "proxy"
    orgId: int = 1
    uid: str | None = Field(None, pattern=r"^[a-zA-Z0-9_-]{1,40}$")
    url: str | None = None
    user: str | None = None
    database: str | None = None  # deprecated: jsonData.database
    basicAuth: bool | None = None
    basicAuthUser: str | None = None
    withCredentials: bool | None = None
    isDefault: bool = False
    jsonData: dict[str, Any] = {}
    secureJsonData: dict[str, str] = {}
    version: int | None = None
    editable: bool = False


class DeleteDatasource(_Strict):
    name: str
    orgId: int = 1


class ProvisionedDatasources(_Strict):
    apiVersion: Literal[1]
    deleteDatasources: list[DeleteDatasource] = []
    prune: bool | None = None
    datasources: list[Datasource] = []


class ProviderOptions(_Strict):
    path: str
    foldersFromFilesStructure: bool = False


class DashboardProvider(_Strict):
    name: str
    orgId: int = 1
    folder: str = ""
    folderUid: str | None = Field(None, pattern=r"^[a-zA-Z0-9_-]{1,40}$")
    type: Literal["file"] = "file"
    disableDeletion: bool = False
    updateIntervalSeconds: int = Field(10, ge=1)
    allowUiUpdates: bool = False
    options: ProviderOptions


class ProvisionedDashboards(_Strict):
    apiVersion: Literal[1]
    providers: list[DashboardProvider]


_ENV = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand_env(doc: Any, env: Mapping[str, str] | None = None) -> tuple[Any, set[str]]:
    """Grafana's `$VAR` / `${VAR}` expansion of the string values of a parsed provisioning file (Grafana
    interpolates values, not comments); returns the expanded document and the variable names used."""
    values = os.environ if env is None else env
    used: set[str] = set()

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        used.add(name)
        return values.get(name, "")

    def walk(x: Any) -> Any:
        if isinstance(x, str):
            return _ENV.sub(sub, x)
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        return x

    return walk(doc), used
