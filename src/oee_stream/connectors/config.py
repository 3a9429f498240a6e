"""Connector definitions: one YAML file per connector in ``connectors/``, Telegraf / benthos-umh style keys.

Every string value may use ``${VAR}`` / ``${VAR:-default}`` (see `envsubst`), so a demo runner or a
container can point a connector at another endpoint without editing the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from oee_stream.config import ConfigError, Plant, format_validation_error, read_yaml
from oee_stream.connectors.envsubst import EnvSubstError, expand_tree
from oee_stream.connectors.modbus_codec import ByteOrder, DataType

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
# a topic segment: no MQTT wildcards or separators, and not starting with "_" (reserved for _status etc.)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    @model_validator(mode="after")
    def _unique_signals(self) -> _ConnectorBase:
        seen: dict[tuple[str, str], str] = {}
        for where, machine, signal in self.signal_refs():
            if (machine, signal) in seen:
                raise ValueError(
                    f"{where}: machine {machine!r} signal {signal!r} is already produced by {seen[machine, signal]}"
                )
            seen[machine, signal] = where
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s: must be >= reconnect_initial_s")
        return self


# ------------------------------------------------------------------------------------------------ OPC UA

SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]


class OpcUaNode(_Strict):
    node_id: str  # "ns=2;s=press-1.State" or "nsu=urn:oee-stream:sim;s=press-1.State"
    machine: Name
    signal: Name
    deadband: Annotated[float, Field(ge=0)] | None = None

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str) -> str:
        from asyncua import ua

        try:
            ua.NodeId.from_string(v)
        except Exception as exc:
            raise ValueError(
                f"{v!r} is not an OPC UA NodeId (e.g. 'ns=2;s=press-1.State', 'nsu=urn:x;i=1001')"
            ) from exc
        return v


class OpcUaNodeGroup(_Strict):
    """Nodes with their own publishing/sampling interval (e.g. fast state bits, slow temperatures)."""

    name: str | None = None
    publishing_interval_ms: Annotated[float, Field(gt=0)] | None = None
    sampling_interval_ms: Annotated[float, Field(ge=0)] | None = None
    deadband: Annotated[float, Field(ge=0)] | None = None
    nodes: Annotated[list[OpcUaNode], Field(min_length=1)]


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
        return v

    @model_validator(mode="after")
    def _check(self) -> OpcUaConfig:
        if not self.nodes and not self.node_groups:
            raise ValueError("nodes: no nodes to read; give `nodes` and/or `node_groups`")
        if (self.security_policy == "None") != (self.security_mode == "None"):
            raise ValueError(
                f"security_mode: security_policy {self.security_policy!r} and security_mode {self.security_mode!r} do not fit: "
                "both 'None', or a policy (Basic256Sha256|Aes128_Sha256_RsaOaep|Aes256_Sha256_RsaPss) "
                "with a mode (Sign|SignAndEncrypt)"
            )
        if self.security_policy != "None" and (self.certificate is None or self.private_key is None):
            raise ValueError(f"certificate: security_policy {self.security_policy!r} needs certificate and private_key")
        if self.security_policy != "None" and self.server_certificate is None:
            # Taking whatever certificate the endpoint offers (trust on first use) would let an impostor in.
            raise ValueError(f"server_certificate: security_policy {self.security_policy!r} needs the server's "
                             "certificate (exported from the server, DER or PEM); it is pinned, never trusted on first use")
        if (self.username is None) != (self.password is None):
            raise ValueError("password: give both username and password, or neither")
        return self

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

    @model_validator(mode="after")
    def _check(self) -> ModbusRegister:
        if self.register_kind in ("coil", "discrete") and self.type != "bool":
            raise ValueError(f"type: register {self.register_kind!r} holds single bits: type must be 'bool', got {self.type!r}")
        if self.type == "bit" and self.bit is None:
            raise ValueError("bit: type 'bit' needs `bit` (0..15, 0 = least significant)")
        if self.bit is not None and self.type != "bit":
            raise ValueError(f"bit: only allowed with type 'bit', not {self.type!r}")
        if self.type in ("bool", "bit") and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"scale: scale/offset make no sense for type {self.type!r}")
        return self


class ModbusGroup(_Strict):
    """Registers polled together at their own interval; contiguous ones are read in one request."""

    name: str | None = None
    poll_interval_ms: Annotated[float, Field(gt=0)] | None = None
    registers: Annotated[list[ModbusRegister], Field(min_length=1)]


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
        if u.scheme not in ("tcp", "rtu-over-tcp") or not u.hostname:
            raise ValueError(f"{v!r} is not a Modbus controller; expected tcp://host:port or rtu-over-tcp://host:port")
        try:
            u.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"{v!r}: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _check(self) -> ModbusConfig:
        if not self.registers and not self.groups:
            raise ValueError("registers: no registers to read; give `registers` and/or `groups`")
        scheme_mode = "RTUoverTCP" if urlparse(self.controller).scheme == "rtu-over-tcp" else "TCP"
        if self.transmission_mode not in ("auto", scheme_mode):
            raise ValueError(
                f"transmission_mode: {self.transmission_mode!r} contradicts controller {self.controller!r}"
            )
        return self

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


def parse_connector(data: Any, source: Path | str = "<connector>",
                    env: Mapping[str, str] | None = None) -> _ConnectorBase:
    """Validate one connector definition (a parsed YAML mapping); errors name the source and field."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        data = expand_tree(data, env)
    except EnvSubstError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    kind = data.get("kind")
    if kind is None:
        raise ConfigError(f"{source}: kind: required field is missing; allowed: {sorted(CONFIG_KINDS)}")
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"{source}: kind: {kind!r} is not a connector kind; allowed: {sorted(CONFIG_KINDS)}")
    try:
        cfg = CONFIG_KINDS[kind].model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
    cfg._source = Path(source)
    return cfg


def load_connectors(
    paths: Path | str | Sequence[Path | str], env: Mapping[str, str] | None = None
) -> list[Any]:
    """Load connector files. A directory means every ``*.yaml`` / ``*.yml`` in it (sorted by name).

    Returns the validated configs (`OpcUaConfig`, `ModbusConfig`, or a plugin's model); raises ConfigError
    naming file and field. Connector ids must be unique over all files.
    """
    items = [paths] if isinstance(paths, Path | str) else list(paths)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file())
        else:
            files.append(p)
    configs: list[Any] = []
    seen: dict[str, Path] = {}
    for f in files:
        cfg = parse_connector(read_yaml(f), f, env)
        if cfg.id in seen:
            raise ConfigError(f"{f}: id: connector id {cfg.id!r} is already used by {seen[cfg.id]}")
        seen[cfg.id] = f
        configs.append(cfg)
    return configs


def check_connectors(plant: Plant, configs: Iterable[_ConnectorBase]) -> None:
    """Every connector's site and machines must exist in the plant; a (machine, signal) has one producer.

    Raises ConfigError listing every problem, each naming the connector file and field.
    """
    machines = sorted(m.id for m in plant.machines)
    problems: list[str] = []
    producers: dict[tuple[str, str], str] = {}
    for cfg in configs:
        src = str(cfg.source) if cfg.source is not None else f"connector {cfg.id}"
        if cfg.site != plant.site.id:
            problems.append(f"{src}: site: {cfg.site!r} is not the plant's site; allowed: [{plant.site.id!r}]")
        for where, machine, signal in cfg.signal_refs():
            if machine not in machines:
                problems.append(f"{src}: {where}.machine: {machine!r} is not a machine of the plant; allowed: {machines}")
                continue
            key = (machine, signal)
            if key in producers:
                problems.append(
                    f"{src}: {where}: machine {machine!r} signal {signal!r} is already produced by {producers[key]}"
                )
            else:
                producers[key] = f"{src} {where}"
    if problems:
        raise ConfigError("connectors do not fit the plant model:\n  - " + "\n  - ".join(problems))
