"""Connector definitions: one YAML file per connector in ``connectors/``, Telegraf / benthos-umh style keys.

Every string value may use ``${VAR}`` / ``${VAR:-default}`` (see `envsubst`), so a demo runner or a
container can point a connector at another endpoint without editing the file.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import ParseResult, urlparse

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined

from oee_stream.config import ID_PATTERN, Id, Plant, load_plant_data, plant_warnings, raw_machine_ids
from oee_stream.config_files import (
    ConfigError,
    FieldPath,
    FieldProblems,
    _field_types,
    did_you_mean,
    load_yaml,
    validation_problems,
)
from oee_stream.connectors.envsubst import expand_tree_with_placeholders
from oee_stream.connectors.modbus_codec import ByteOrder, DataType, register_count

# Connector ids, sites, machines and signals are topic segments (no MQTT wildcards or separators, no
# leading "_", which is reserved for _status etc.): the plant model's id rule.
Name = Id


def _expected(tp: Any) -> str:
    """What a field takes, for a message: its allowed values, or the kind of value."""
    parts: list[str] = []
    for alt in _field_types(tp):
        origin = get_origin(alt)
        if origin is Literal:
            parts.append("one of " + ", ".join(repr(a) for a in get_args(alt)))
        elif alt is float:
            parts.append("a number")
        elif alt is int:
            parts.append("a whole number")
        elif alt is str:
            parts.append("text")
        elif origin is list:
            parts.append("a list")
        elif isinstance(alt, type) and issubclass(alt, BaseModel):
            parts.append("a mapping (key: value)")
    return " or ".join(parts) or "a value"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _not_empty(cls, v: Any, info: ValidationInfo) -> Any:
        # `security_policy:` with nothing after it is YAML null; pydantic would say "None is not allowed;
        # expected 'None', ...", which reads as if the policy 'None' were refused.
        if v is not None or info.field_name is None:
            return v
        f = cls.model_fields[info.field_name]
        if type(None) in _field_types(f.annotation):
            return v
        default = "" if f.default in (PydanticUndefined, None) else f" (leave the key out for the default {f.default!r})"
        raise ValueError(f"the value is empty; expected {_expected(f.annotation)}{default}")


def _url_problem(v: str, u: ParseResult) -> str | None:
    """A space or a port that is not 1..65535 in a host:port URL (urlparse accepts both, or says little)."""
    if any(c.isspace() for c in v):
        return "contains a space; remove it"
    m = re.match(r"^(?:[^@]*@)?(?:\[[^\]]*\]|[^:]*)(?::(?P<port>.*))?$", u.netloc)
    port = m["port"] if m else None
    if port is None:
        return None
    if not port:
        return "the port after ':' is empty"
    if not re.fullmatch(r"[0-9]+", port):
        return f"the port {port!r} is not a number 1..65535"
    if not 1 <= int(port) <= 65535:
        return f"the port {int(port)} is out of range 1..65535"
    return None


class PublishSettings(_Strict):
    """How samples leave the connector: a bounded buffer (store-and-forward), batched per (machine, signal)
    or per machine, QoS 1, deleted from the buffer only after the broker's PUBACK."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # memory: lost when the process stops; disk: a SQLite spool that survives restarts (see connectors/spool.py).
    # None = the runner decides: `oee-stream run` uses disk, the demo and tests memory.
    buffer: Literal["memory", "disk"] | None = None
    # the bound of either buffer; `buffer_size` is the old name
    max_samples: Annotated[int, Field(ge=1, validation_alias=AliasChoices("max_samples", "buffer_size"))] = 100_000
    when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    spool_dir: str | None = None  # disk buffer directory; default <data dir>/spool/<connector id> (var/spool/<id>)
    spool_synchronous: Literal["normal", "full"] = "normal"  # full: fsync every commit (power-loss safe)
    max_batch_samples: Annotated[int, Field(ge=1)] = 1000
    # per_signal: one message per (machine, signal) on oee/v1/{site}/{machine}/{signal}, what every v1
    # consumer reads; per_machine: one message per machine on oee/v1/{site}/{machine}/_batch carrying all
    # its signals (docs/bus.md), far fewer messages for pollers with many registers.
    batching: Literal["per_signal", "per_machine"] = "per_signal"
    linger_ms: Annotated[float, Field(ge=0)] = 50.0
    ack_timeout_s: Annotated[float, Field(gt=0)] = 10.0

    @property
    def buffer_size(self) -> int:  # the old name, kept for callers
        return self.max_samples


class _ConnectorBase(_Strict):
    id: Name
    site: Name
    reconnect_initial_s: Annotated[float, Field(gt=0)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0)] = 30.0
    publish: PublishSettings = Field(default_factory=PublishSettings)

    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The file this connector was loaded from (None when built in code)."""
        return self._source

    def signal_refs(self) -> list[tuple[str, str, str]]:
        """(field path, machine, signal) of every signal this connector produces."""
        raise NotImplementedError

    @property
    def machines(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for _, m, _ in self.signal_refs()))

    def _kind_problems(self) -> list[tuple[FieldPath, str]]:
        """The checks of one connector kind (one validator for all, so that every problem is reported)."""
        return []

    @model_validator(mode="after")
    def _check_connector(self) -> _ConnectorBase:
        problems: list[tuple[FieldPath, str]] = []
        seen: dict[tuple[str, str], str] = {}
        for where, machine, signal in self.signal_refs():
            if (machine, signal) in seen:
                problems.append(((where,), f"machine {machine!r} signal {signal!r} is already produced by "
                                           f"{seen[machine, signal]}"))
            else:
                seen[machine, signal] = where
        if self.reconnect_max_s < self.reconnect_initial_s:
            problems.append((("reconnect_max_s",), f"{self.reconnect_max_s} is less than reconnect_initial_s "
                                                   f"({self.reconnect_initial_s}); it must be >= it"))
        problems += self._kind_problems()
        if problems:
            raise FieldProblems(problems)
        return self


# ------------------------------------------------------------------------------------------------ OPC UA

SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]


_NODE_ID_EXAMPLES = "e.g. 'ns=2;s=press-1.State', 'nsu=urn:x;i=1001'"
_UINT16_MAX = 65535
_UINT32_MAX = 4294967295


def _node_id_problem(v: str) -> str | None:
    """Why `v` cannot name a node the connector can monitor, or None.

    asyncua's parser takes more than works: `ns=70000`, `i=-5`, an empty `s=`, undecodable `b=` bytes (which
    become empty) and spaces around the parts all parse, and fail only at the server, or never match a node.
    """
    if v != v.strip():
        return "it starts or ends with a space; remove it"
    parts: dict[str, str] = {}
    rest = v
    while True:
        key, eq, value = rest.partition("=")
        if not eq:
            return f"no identifier (i=, s=, g= or b=) ({_NODE_ID_EXAMPLES})"
        if key != key.strip():
            return f"a space around {key.strip()!r}; remove it (only a string identifier may hold spaces)"
        if key in ("i", "s", "g", "b"):
            break  # the identifier is the rest: a string identifier may hold ';' and '='
        if key not in ("ns", "nsu", "srv"):
            return f"unknown part {key!r}; expected ns= or nsu=, then i=, s=, g= or b= ({_NODE_ID_EXAMPLES})"
        value, semi, rest = value.partition(";")
        if key in parts:
            return f"{key}= is given twice"
        if value != value.strip():
            return f"a space around the value of {key}= ({value!r}); remove it"
        parts[key] = value
        if not semi:
            return f"no identifier after {key}={value} (i=, s=, g= or b=) ({_NODE_ID_EXAMPLES})"
    if "srv" in parts:
        return "srv= (a node of another server) is not supported; the connector reads the endpoint's own nodes"
    if "ns" in parts and "nsu" in parts:
        return "give the namespace by index (ns=) or by URI (nsu=), not both"
    ns = parts.get("ns")
    if ns is not None and not (re.fullmatch(r"[0-9]+", ns) and int(ns) <= _UINT16_MAX):
        return f"the namespace index {ns!r} is not allowed; expected a whole number 0..{_UINT16_MAX} (UInt16)"
    if parts.get("nsu") == "":
        return "the namespace URI after nsu= is empty"
    if key == "i" and not (re.fullmatch(r"[0-9]+", value) and int(value) <= _UINT32_MAX):
        return f"the numeric identifier {value!r} is not allowed; expected a whole number 0..{_UINT32_MAX} (UInt32)"
    if key == "s" and not value:
        return "the string identifier after s= is empty"
    if key == "s" and value != value.lstrip():
        return "the string identifier starts with a space; remove it"
    if key == "g":
        try:
            uuid.UUID(value)
        except ValueError:
            return (f"the GUID {value!r} is not valid; expected 32 hex digits as 8-4-4-4-12, "
                    "e.g. g=09087e75-8e5e-499b-954f-f2a9603db28a")
    if key == "b":
        try:
            raw = bytes.fromhex(value[2:]) if value.startswith("0x") else base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            raw = b""
        if not raw:
            return (f"the opaque identifier {value!r} is not allowed; expected base64 (b=aGVsbG8=) or hex "
                    "(b=0x68656c6c6f), not empty")
    return None


class OpcUaNode(_Strict):
    node_id: str  # "ns=2;s=press-1.State" or "nsu=urn:oee-stream:sim;s=press-1.State"
    machine: Name
    signal: Name
    deadband: Annotated[float, Field(ge=0)] | None = None

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str) -> str:
        from asyncua import ua

        problem = _node_id_problem(v)
        if problem is not None:
            raise ValueError(f"{v!r} is not an OPC UA NodeId: {problem}")
        try:
            ua.NodeId.from_string(v)
        except Exception as exc:
            raise ValueError(f"{v!r} is not an OPC UA NodeId ({_NODE_ID_EXAMPLES})") from exc
        return v


class OpcUaNodeGroup(_Strict):
    """Nodes with their own publishing/sampling interval (e.g. fast state bits, slow temperatures)."""

    name: str | None = None
    publishing_interval_ms: Annotated[float, Field(gt=0)] | None = None
    sampling_interval_ms: Annotated[float, Field(ge=0)] | None = None
    deadband: Annotated[float, Field(ge=0)] | None = None
    nodes: list[OpcUaNode]

    @field_validator("nodes")
    @classmethod
    def _some_nodes(cls, v: list[OpcUaNode]) -> list[OpcUaNode]:
        if not v:
            raise ValueError("the group has no nodes; at least one node is needed")
        return v


@dataclass(frozen=True)
class ResolvedOpcUaGroup:
    name: str
    publishing_interval_ms: float
    sampling_interval_ms: float
    deadband: float
    nodes: tuple[OpcUaNode, ...]


class OpcUaConfig(_ConnectorBase):
    kind: Literal["opcua"]
    endpoint: str
    security_policy: SecurityPolicy = "None"
    security_mode: SecurityMode = "None"
    certificate: str | None = None
    private_key: str | None = None
    private_key_password: str | None = None
    server_certificate: str | None = None
    application_uri: str | None = None  # must match the URI in `certificate` when security is on
    username: str | None = None
    password: str | None = None
    publishing_interval_ms: Annotated[float, Field(gt=0)] = 1000.0
    sampling_interval_ms: Annotated[float, Field(ge=0)] = 250.0
    deadband: Annotated[float, Field(ge=0)] = 0.0  # absolute deadband for numeric nodes; 0 = every change
    queue_size: Annotated[int, Field(ge=1)] = 100  # server-side queue per monitored item (keeps every change)
    max_nodes_per_subscription: Annotated[int, Field(ge=1)] = 1000
    timeout_s: Annotated[float, Field(gt=0)] = 5.0
    watchdog_interval_s: Annotated[float, Field(gt=0)] = 2.0
    nodes: list[OpcUaNode] = Field(default_factory=list)
    node_groups: list[OpcUaNodeGroup] = Field(default_factory=list)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme != "opc.tcp" or not u.hostname:
            raise ValueError(f"{v!r} is not an OPC UA endpoint; expected opc.tcp://host:port/path")
        problem = _url_problem(v, u)
        if problem is not None:
            raise ValueError(f"{v!r}: {problem}; expected opc.tcp://host:port/path")
        return v

    def _kind_problems(self) -> list[tuple[FieldPath, str]]:
        problems: list[tuple[FieldPath, str]] = []
        if not self.nodes and not self.node_groups:
            problems.append((("nodes",), "no nodes to read; give `nodes` and/or `node_groups`"))
        if (self.security_policy == "None") != (self.security_mode == "None"):
            problems.append((("security_mode",),
                             f"security_policy {self.security_policy!r} and security_mode {self.security_mode!r} do "
                             "not fit: both 'None', or a policy (Basic256Sha256|Aes128_Sha256_RsaOaep|"
                             "Aes256_Sha256_RsaPss) with a mode (Sign|SignAndEncrypt)"))
        if self.security_policy != "None":
            for key in ("certificate", "private_key"):
                if getattr(self, key) is None:
                    problems.append(((key,), f"security_policy {self.security_policy!r} needs certificate and "
                                             "private_key"))
            if self.server_certificate is None:
                # Taking whatever certificate the endpoint offers (trust on first use) would let an impostor in.
                problems.append((("server_certificate",),
                                 f"security_policy {self.security_policy!r} needs the server's certificate "
                                 "(exported from the server, DER or PEM); it is pinned, never trusted on first use"))
        if (self.username is None) != (self.password is None):
            problems.append((("password" if self.password is None else "username",),
                             "give both username and password, or neither"))
        return problems

    def signal_refs(self) -> list[tuple[str, str, str]]:
        refs = [(f"nodes.{i}", n.machine, n.signal) for i, n in enumerate(self.nodes)]
        for gi, g in enumerate(self.node_groups):
            refs += [(f"node_groups.{gi}.nodes.{i}", n.machine, n.signal) for i, n in enumerate(g.nodes)]
        return refs

    def groups(self) -> list[ResolvedOpcUaGroup]:
        out: list[ResolvedOpcUaGroup] = []
        if self.nodes:
            out.append(
                ResolvedOpcUaGroup(
                    "default", self.publishing_interval_ms, self.sampling_interval_ms, self.deadband,
                    tuple(self.nodes),
                )
            )
        for i, g in enumerate(self.node_groups):
            out.append(
                ResolvedOpcUaGroup(
                    g.name or f"group-{i}",
                    g.publishing_interval_ms or self.publishing_interval_ms,
                    g.sampling_interval_ms if g.sampling_interval_ms is not None else self.sampling_interval_ms,
                    g.deadband if g.deadband is not None else self.deadband,
                    tuple(g.nodes),
                )
            )
        return out


# ------------------------------------------------------------------------------------------------ Modbus

RegisterKind = Literal["coil", "discrete", "holding", "input"]

# PLC / IEC 61131 type names → the `type` to use (did_you_mean would offer float64 for `float`)
_PLC_TYPE_NAMES = {
    "float": "'float32' (a PLC REAL) or 'float64' (an LREAL)",
    "real": "'float32'", "lreal": "'float64'", "double": "'float64'",
    "int": "'int16' (a PLC INT) or 'int32' (a DINT)", "dint": "'int32'", "uint": "'uint16'", "udint": "'uint32'",
    "word": "'uint16'", "dword": "'uint32'", "boolean": "'bool'",
}


class ModbusRegister(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    machine: Name
    signal: Name
    register_kind: RegisterKind = Field("holding", alias="register")  # YAML key: register
    address: Annotated[int, Field(ge=0, le=65535)]
    type: DataType = "uint16"
    bit: Annotated[int, Field(ge=0, le=15)] | None = None
    scale: float = 1.0
    offset: float = 0.0
    byte_order: ByteOrder | None = None  # overrides the connector's byte_order

    @field_validator("type", mode="before")
    @classmethod
    def _plc_type_name(cls, v: Any) -> Any:
        # The closest spelling of `float` is 'float64', but a PLC's REAL, the usual analog value, is float32.
        hint = _PLC_TYPE_NAMES.get(v.lower()) if isinstance(v, str) and v not in get_args(DataType) else None
        if hint is not None:
            *most, last = (repr(t) for t in get_args(DataType))
            allowed = f"{', '.join(most)} or {last}"
            raise ValueError(f"{v!r} is not allowed; expected {allowed}; did you mean {hint}?")
        return v

    @field_validator("scale", "offset")
    @classmethod
    def _factor(cls, v: float, info: ValidationInfo) -> float:
        # field checks, not in `_check`: they are reported even when another field (the type) is wrong
        if not math.isfinite(v):
            raise ValueError(f"{v} is not allowed; expected a finite number")
        if v == 0 and info.field_name == "scale":
            raise ValueError("0 is not allowed: it makes every value 0; expected a non-zero factor (1 = the raw value)")
        return v

    @model_validator(mode="after")
    def _check(self) -> ModbusRegister:
        problems: list[tuple[FieldPath, str]] = []
        if self.register_kind in ("coil", "discrete") and self.type != "bool":
            problems.append((("type",), f"register {self.register_kind!r} holds single bits: type must be 'bool', "
                                        f"got {self.type!r}"))
        if self.type == "bit" and self.bit is None:
            problems.append((("bit",), "type 'bit' needs `bit` (0..15, 0 = least significant)"))
        if self.bit is not None and self.type != "bit":
            problems.append((("bit",), f"only allowed with type 'bit', not {self.type!r}"))
        if self.type in ("bool", "bit") and (self.scale != 1.0 or self.offset != 0.0):
            problems.append((("scale",), f"scale/offset make no sense for type {self.type!r}"))
        n = register_count(self.type)
        if self.address + n - 1 > 65535:
            problems.append((("address",), f"{self.type} at {self.address} needs {n} registers, up to "
                                           f"{self.address + n - 1}, past the last address 65535; the highest "
                                           f"address for {self.type} is {65536 - n}"))
        if problems:
            raise FieldProblems(problems)
        return self


class ModbusGroup(_Strict):
    """Registers polled together at their own interval; contiguous ones are read in one request."""

    name: str | None = None
    poll_interval_ms: Annotated[float, Field(gt=0)] | None = None
    registers: list[ModbusRegister]

    @field_validator("registers")
    @classmethod
    def _some_registers(cls, v: list[ModbusRegister]) -> list[ModbusRegister]:
        if not v:
            raise ValueError("the group has no registers; at least one register is needed")
        return v


@dataclass(frozen=True)
class ResolvedModbusGroup:
    name: str
    poll_interval_ms: float
    registers: tuple[ModbusRegister, ...]


class ModbusConfig(_ConnectorBase):
    kind: Literal["modbus"]
    controller: str  # tcp://host:port or rtu-over-tcp://host:port
    transmission_mode: Literal["auto", "TCP", "RTUoverTCP"] = "auto"
    slave_id: Annotated[int, Field(ge=0, le=255)] = 1
    byte_order: ByteOrder = "ABCD"
    timeout_s: Annotated[float, Field(gt=0)] = 2.0
    poll_interval_ms: Annotated[float, Field(gt=0)] = 1000.0
    max_gap: Annotated[int, Field(ge=0, le=100)] = 8  # registers read and ignored to merge two ranges
    max_registers_per_read: Annotated[int, Field(ge=1, le=125)] = 125
    registers: list[ModbusRegister] = Field(default_factory=list)
    groups: list[ModbusGroup] = Field(default_factory=list)

    @field_validator("controller")
    @classmethod
    def _controller(cls, v: str) -> str:
        u = urlparse(v)
        expected = "expected tcp://host:port or rtu-over-tcp://host:port"
        if u.scheme not in ("tcp", "rtu-over-tcp") or not u.hostname:
            raise ValueError(f"{v!r} is not a Modbus controller; {expected}")
        problem = _url_problem(v, u)
        if problem is not None:
            raise ValueError(f"{v!r}: {problem}; {expected}")
        if u.path not in ("", "/") or u.query or u.fragment or u.params:
            # the connector would ignore it: a unit number there is not the slave_id it reads from
            raise ValueError(f"{v!r}: {v[len(u.scheme) + 3 + len(u.netloc):]!r} after host:port is not allowed "
                             f"(the unit id goes in `slave_id`); {expected}")
        return v

    def _kind_problems(self) -> list[tuple[FieldPath, str]]:
        problems: list[tuple[FieldPath, str]] = []
        if not self.registers and not self.groups:
            problems.append((("registers",), "no registers to read; give `registers` and/or `groups`"))
        scheme_mode = "RTUoverTCP" if urlparse(self.controller).scheme == "rtu-over-tcp" else "TCP"
        if self.transmission_mode not in ("auto", scheme_mode):
            problems.append((("transmission_mode",), f"{self.transmission_mode!r} contradicts controller "
                                                     f"{self.controller!r}; use 'auto' or {scheme_mode!r}"))
        return problems

    @property
    def host(self) -> str:
        return urlparse(self.controller).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlparse(self.controller).port or 502

    @property
    def rtu_over_tcp(self) -> bool:
        return self.transmission_mode == "RTUoverTCP" or urlparse(self.controller).scheme == "rtu-over-tcp"

    def signal_refs(self) -> list[tuple[str, str, str]]:
        refs = [(f"registers.{i}", r.machine, r.signal) for i, r in enumerate(self.registers)]
        for gi, g in enumerate(self.groups):
            refs += [(f"groups.{gi}.registers.{i}", r.machine, r.signal) for i, r in enumerate(g.registers)]
        return refs

    def poll_groups(self) -> list[ResolvedModbusGroup]:
        out: list[ResolvedModbusGroup] = []
        if self.registers:
            out.append(ResolvedModbusGroup("default", self.poll_interval_ms, tuple(self.registers)))
        for i, g in enumerate(self.groups):
            out.append(
                ResolvedModbusGroup(g.name or f"group-{i}", g.poll_interval_ms or self.poll_interval_ms,
                                    tuple(g.registers))
            )
        return out


# -------------------------------------------------------------------------------------------- loading

ConnectorConfig = Annotated[OpcUaConfig | ModbusConfig, Field(discriminator="kind")]

# kind → config model; plugins add theirs with `register_config_kind`
CONFIG_KINDS: dict[str, type[_ConnectorBase]] = {"opcua": OpcUaConfig, "modbus": ModbusConfig}


def register_config_kind(kind: str, model: type[_ConnectorBase]) -> None:
    CONFIG_KINDS[kind] = model


def validate_connector(data: Any, source: Path | str = "<connector>",
                       env: Mapping[str, str] | None = None) -> tuple[_ConnectorBase | None, list[str]]:
    """(config, []) or (None, every problem found), each problem naming the source and the field."""
    if data is None:
        return None, [f"{source}: the file is empty; expected a connector definition "
                      f"(a mapping with kind, id, site, ...)"]
    if not isinstance(data, Mapping):
        return None, [f"{source}: expected a mapping (key: value) at the top level, got "
                      f"{'a list' if isinstance(data, list) else repr(data)}"]
    # Unset variables get a placeholder, so that the file's other problems are reported in the same run.
    raw = data
    data, unresolved = expand_tree_with_placeholders(raw, env)
    problems = [f"{source}: {where}: {reason}" for where, reason in unresolved]
    kind = data.get("kind")
    kinds = sorted(CONFIG_KINDS)
    if any(where == "kind" for where, _ in unresolved):
        return None, problems
    if kind is None:
        wrapper = None if "kind" in data else _connector_wrapper(data)
        if wrapper is not None:
            return None, [*problems, f"{source}: {wrapper}: a connector file holds one connector at the top level "
                                     f"(kind, id, site, ...), not under {wrapper!r}; remove the `{wrapper}:` key "
                                     "and put each connector in a file of its own"]
        missing = "the value is empty" if "kind" in data else "required field is missing"
        return None, [*problems, f"{source}: kind: {missing}; allowed: {kinds}"]
    if not isinstance(kind, str) or kind not in CONFIG_KINDS:
        best = did_you_mean(str(kind), kinds)
        hint = f"; did you mean {best!r}?" if best else ""
        return None, [*problems, f"{source}: kind: {kind!r} is not a connector kind; allowed: {kinds}{hint}"]
    model = CONFIG_KINDS[kind]
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        found = validation_problems(source, exc, model)
        if unresolved:
            # An error at a field holding a placeholder is about the placeholder, not the file; so is one
            # that changes with the placeholders' values (another field compared with one of them).
            prefixes = tuple(f"{source}: {where}{sep}" for where, _ in unresolved for sep in (":", "."))
            again = _problems_with(model, expand_tree_with_placeholders(raw, env, first=2)[0], source)
            found = [p for p in found if not p.startswith(prefixes) and p in again]
        return None, problems + found
    if problems:
        return None, problems
    cfg._source = Path(source)
    return cfg, []


def _problems_with(model: type[_ConnectorBase], data: Any, source: Path | str) -> list[str]:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return validation_problems(source, exc, model)
    return []


def _connector_wrapper(data: Mapping[Any, Any]) -> str | None:
    """The top-level key that wraps connector definitions (`connectors: [{kind: opcua, ...}]`), if any."""
    def is_connector(v: Any) -> bool:
        return isinstance(v, Mapping) and "kind" in v

    for key, value in data.items():
        items = value if isinstance(value, list) else list(value.values()) if isinstance(value, Mapping) else []
        if key == "connectors" or is_connector(value) or any(is_connector(v) for v in items):
            return str(key)
    return None


def parse_connector(data: Any, source: Path | str = "<connector>",
                    env: Mapping[str, str] | None = None) -> _ConnectorBase:
    """Validate one connector definition (a parsed YAML mapping); errors name the source and field."""
    cfg, problems = validate_connector(data, source, env)
    if cfg is None:
        raise ConfigError(*problems)
    return cfg


YAML_SUFFIXES = (".yaml", ".yml")


def connector_files(paths: Path | str | Sequence[Path | str]) -> tuple[list[Path], list[str]]:
    """The connector files to load and the paths that do not exist.

    A folder means every ``*.yaml`` / ``*.yml`` in it, sorted by name; the extension's case does not
    matter (`line1.YAML` from a Windows editor is meant as a connector file too).
    """
    items = [paths] if isinstance(paths, Path | str) else list(paths)
    files: list[Path] = []
    problems: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in YAML_SUFFIXES and f.is_file())
        elif p.exists() or p.suffix.lower() in YAML_SUFFIXES:
            files.append(p)
        else:
            problems.append(f"{p}: no such folder")
    return files, problems


def _load_connector_files(files: Sequence[Path], env: Mapping[str, str] | None
                          ) -> tuple[list[_ConnectorBase], list[str]]:
    configs: list[_ConnectorBase] = []
    problems: list[str] = []
    seen: dict[str, Path] = {}
    for f in files:
        try:
            data, found = load_yaml(f)
        except ConfigError as exc:
            problems += exc.problems
            continue
        cfg, more = validate_connector(data, f, env)
        problems += found + more
        if cfg is None or found:
            continue
        if cfg.id in seen:
            problems.append(f"{f}: id: connector id {cfg.id!r} is already used by {seen[cfg.id]}")
            continue
        seen[cfg.id] = f
        configs.append(cfg)
    return configs, problems


def load_connectors(
    paths: Path | str | Sequence[Path | str], env: Mapping[str, str] | None = None
) -> list[Any]:
    """Load connector files. A directory means every ``*.yaml`` / ``*.yml`` in it (sorted by name).

    Returns the validated configs (`OpcUaConfig`, `ModbusConfig`, or a plugin's model); raises ConfigError
    listing every problem of every file, each naming file and field. Connector ids must be unique over all
    files.
    """
    files, problems = connector_files(paths)
    configs, more = _load_connector_files(files, env)
    if problems or more:
        raise ConfigError(*problems, *more)
    return configs


# -------------------------------------------------------------------------------------- cross-checks

# Modbus manuals number registers from 1 with the table's prefix (40001 = holding register 0).
_REGISTER_NUMBER_BASE = {"holding": 40001, "input": 30001, "discrete": 10001}
# The signals a machine's state comes from, by its state_source (the engine's meaning, engine/plant.py).
_STATE_SIGNAL = {"state_code": "state", "run_bit": "run", "counts": "total"}


def _src(cfg: _ConnectorBase) -> str:
    return str(cfg.source) if cfg.source is not None else f"connector {cfg.id}"


def _file_findings(cfg: _ConnectorBase) -> tuple[list[str], list[str]]:
    """Problems of one connector that need the file system or are only suspicious, not invalid."""
    errors: list[str] = []
    warnings: list[str] = []
    src = _src(cfg)
    if isinstance(cfg, OpcUaConfig):
        for key in ("certificate", "private_key", "server_certificate"):
            value = getattr(cfg, key)
            if value is None:
                continue
            if cfg.security_policy == "None":
                warnings.append(f"{src}: {key}: not used, because security_policy is 'None'")
                continue
            path = Path(value)
            if not path.is_file():
                # asyncua and the pinning check open the path as given, i.e. from the working directory.
                where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
                what = "is a folder, not a file" if path.is_dir() else "does not exist"
                errors.append(f"{src}: {key}: {value!r} {what}{where}")
    if isinstance(cfg, ModbusConfig):
        regs = [(f"registers.{i}", r) for i, r in enumerate(cfg.registers)]
        regs += [(f"groups.{gi}.registers.{i}", r) for gi, g in enumerate(cfg.groups) for i, r in enumerate(g.registers)]
        for where, r in regs:
            base = _REGISTER_NUMBER_BASE.get(r.register_kind)
            if base is not None and base <= r.address < base + 9999:
                warnings.append(
                    f"{src}: {where}.address: {r.address} looks like a 1-based register number "
                    f"({str(base)[0]}xxxx); `address` is the 0-based protocol address, here probably "
                    f"{r.address - base}")
        warnings += _overlaps(src, regs)
    return errors, warnings


def _span(r: ModbusRegister) -> str:
    last = r.address + register_count(r.type) - 1
    return f"{r.register_kind} {r.type} at {r.address}" + (f" (registers {r.address}-{last})" if last > r.address else "")


def _overlaps(src: str, regs: Sequence[tuple[str, ModbusRegister]]) -> list[str]:
    """Values of one device that share a register: usually one of them is at the wrong address.

    `bit` values are left out: reading single bits of a status word that is also read whole is common.
    """
    out: list[str] = []
    ordered = sorted(((r.register_kind, r.address, i) for i, (_, r) in enumerate(regs) if r.type != "bit"))
    active: list[int] = []  # indexes of earlier values of this kind whose registers may reach the current one
    kind = None
    for k, address, i in ordered:
        if k != kind:
            kind, active = k, []
        active = [j for j in active if regs[j][1].address + register_count(regs[j][1].type) > address]
        for j in active:
            (where, r), (other, o) = regs[i], regs[j]
            out.append(f"{src}: {where}.address: {_span(r)} overlaps {other} ({_span(o)}, {o.machine}/{o.signal}) "
                       "on the same device; one of the two addresses is probably wrong")
        active.append(i)
    return out


def connector_findings(plant: Plant | None, configs: Sequence[_ConnectorBase],
                       plant_source: Path | str | None = None,
                       complete: bool = True,
                       machine_ids: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the connectors against each other and, when given, the plant.

    Errors: a site or machine not in the plant, a (machine, signal) with two producers, a certificate
    file that is not there. Warnings: a signal name that looks like a misspelt engine signal, a Modbus
    address that looks 1-based and (when `complete`, i.e. every connector file loaded) a machine whose
    state signal no connector produces.

    Without a plant (its file has errors), `machine_ids` read from its raw YAML (`raw_machine_ids`) still
    check the connectors' machines and producers; the site and the state signals need the plant.
    """
    from oee_stream.engine.plant import SIGNAL_CODES

    errors: list[str] = []
    warnings: list[str] = []
    for cfg in configs:
        e, w = _file_findings(cfg)
        errors += e
        warnings += w
    engine_signals = list(SIGNAL_CODES)
    for cfg in configs:
        for where, _, signal in cfg.signal_refs():
            if signal in SIGNAL_CODES:
                continue
            # Other names are stored and not used for KPIs (docs/connectors.md), so only a near miss of an
            # engine signal is suspicious: `totl` or `State` would silently leave the machine without counts.
            best = did_you_mean(signal, engine_signals, cutoff=0.75)
            if best is not None:
                warnings.append(f"{_src(cfg)}: {where}.signal: {signal!r} is not an engine signal "
                                f"({', '.join(engine_signals)}); did you mean {best!r}? (other names are "
                                "stored but not used for KPIs)")
    if plant is not None:
        machine_ids = [m.id for m in plant.machines]
    if machine_ids is None:
        return errors, warnings
    # A broken plant file may name a machine twice or with an invalid id: list (and suggest) only the ids
    # a connector can use.
    machines = sorted({m for m in machine_ids if re.fullmatch(ID_PATTERN, m)})
    producers: dict[tuple[str, str], str] = {}
    produced: dict[str, set[str]] = {}
    for cfg in configs:
        src = _src(cfg)
        if plant is not None and cfg.site != plant.site.id:
            errors.append(f"{src}: site: {cfg.site!r} is not the plant's site; allowed: [{plant.site.id!r}]")
        for where, machine, signal in cfg.signal_refs():
            if machine not in machines:
                best = did_you_mean(machine, machines)
                hint = f"; did you mean {best!r}?" if best else ""
                errors.append(f"{src}: {where}.machine: {machine!r} is not a machine of the plant; "
                              f"allowed: {machines}{hint}")
                continue
            produced.setdefault(machine, set()).add(signal)
            key = (machine, signal)
            if key in producers:
                errors.append(f"{src}: {where}: machine {machine!r} signal {signal!r} is already produced by "
                              f"{producers[key]}")
            else:
                producers[key] = f"{src} {where}"
    if complete and configs and plant is not None:
        where_plant = f"{plant_source}: " if plant_source is not None else ""
        for li, line in enumerate(plant.lines):
            for mi, m in enumerate(line.machines):
                need = _STATE_SIGNAL[m.state_source]
                have = produced.get(m.id, set())
                if need in have:
                    continue
                # `total` is left out: nearly every machine has one, it says nothing about the intent.
                other = [(s, sig) for s, sig in _STATE_SIGNAL.items() if sig in have and sig != "total"]
                hint = (f"; it does get {other[0][1]!r}: did you mean state_source: {other[0][0]}?"
                        if other else "")
                warnings.append(f"{where_plant}lines.{li}.machines.{mi}: machine {m.id!r} has no connector "
                                f"producing {need!r} (needed by state_source: {m.state_source}); its time will "
                                f"be unknown{hint}")
    return errors, warnings


def check_connectors(plant: Plant, configs: Iterable[_ConnectorBase]) -> None:
    """Every connector's site and machines must exist in the plant; a (machine, signal) has one producer;
    certificate files must exist.

    Raises ConfigError listing every problem, each naming the connector file and field.
    """
    errors, _ = connector_findings(plant, list(configs))
    if errors:
        raise ConfigError(*errors)


# ------------------------------------------------------------------------------------------ check-config


@dataclass
class ConfigReport:
    """What `oee-stream check-config` found: errors make the configuration unusable, warnings do not."""

    plant: Plant | None = None
    plant_path: Path | None = None
    connector_files: list[Path] = field(default_factory=list)
    connectors: list[_ConnectorBase] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_config_files(plant_path: Path | str, connector_paths: Path | str | Sequence[Path | str] | None,
                       env: Mapping[str, str] | None = None) -> ConfigReport:
    """Validate the plant model and the connector files against each other, collecting every problem.

    `connector_paths` None checks the plant alone. Nothing is connected to.
    """
    report = ConfigReport(plant_path=Path(plant_path))
    machine_ids: list[str] | None = None
    try:
        data, report.plant, problems = load_plant_data(plant_path)
        report.errors += problems
        if report.plant is None:
            # The connectors are still checked against the machines the file names.
            machine_ids = raw_machine_ids(data)
    except ConfigError as exc:
        report.errors += exc.problems
    if report.plant is not None:
        report.warnings += plant_warnings(report.plant, plant_path)
    if connector_paths is None:
        return report
    files, problems = connector_files(connector_paths)
    report.errors += problems
    report.connector_files = files
    if not files and not problems:
        report.warnings.append(f"{connector_paths}: no connector files (*.yaml, *.yml); no machine gets data")
    report.connectors, problems = _load_connector_files(files, env)
    report.errors += problems
    complete = not problems and report.plant is not None
    errors, warnings = connector_findings(report.plant, report.connectors, plant_path, complete=complete,
                                          machine_ids=machine_ids)
    report.errors += errors
    report.warnings += warnings
    return report
