"""Connector definitions: validation errors name file, field and allowed values; ${VAR:-default}; plant check."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from oee_stream.bus import MqttSettings
from oee_stream.config import ConfigError, load_plant
from oee_stream.connectors import (
    Connector,
    ModbusConfig,
    OpcUaConfig,
    build_connector,
    check_connectors,
    connector_kinds,
    expand_env,
    load_connectors,
    parse_connector,
)
from oee_stream.connectors.config import ConfigReport, check_config_files
from oee_stream.connectors.envsubst import EnvSubstError

REPO = Path(__file__).resolve().parent.parent
PLANT = REPO / "deploy" / "demo" / "plant.yaml"


def opcua(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "kind": "opcua",
        "id": "ua",
        "site": "alu-works",
        "endpoint": "opc.tcp://127.0.0.1:4840/x/",
        "nodes": [{"node_id": "ns=2;s=press-1.State", "machine": "press-1", "signal": "state"}],
    }
    d.update(over)
    return d


def modbus(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "kind": "modbus",
        "id": "mb",
        "site": "alu-works",
        "controller": "tcp://127.0.0.1:502",
        "registers": [{"machine": "furnace-1", "signal": "state", "address": 0}],
    }
    d.update(over)
    return d


def write(tmp_path: Path, name: str, data: Any) -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def error_of(data: Any, source: str = "connectors/x.yaml", env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_connector(data, source, env=env or {})
    return str(ei.value)


# ------------------------------------------------------------------------------------------ demo files


def test_demo_connectors_load_and_fit_the_demo_plant() -> None:
    configs = load_connectors(REPO / "connectors", env={})
    kinds = {c.kind: c for c in configs}
    assert set(kinds) == {"opcua", "modbus"}
    ua_cfg, mb_cfg = kinds["opcua"], kinds["modbus"]
    assert isinstance(ua_cfg, OpcUaConfig) and isinstance(mb_cfg, ModbusConfig)
    assert ua_cfg.endpoint == "opc.tcp://127.0.0.1:4840/oee-stream/sim/"
    assert set(ua_cfg.machines) == {"press-1", "caster-1"}
    assert mb_cfg.machines == ("furnace-1",)
    signals = {s for _, m, s in mb_cfg.signal_refs()}
    assert signals == {"state", "total", "input", "reject", "temperature", "product"}
    check_connectors(load_plant(PLANT), configs)
    assert ua_cfg.source is not None and ua_cfg.source.name == "opcua-demo.yaml"


def test_demo_endpoints_are_overridable_from_the_environment() -> None:
    env = {
        "OEE_SIM_OPCUA_ENDPOINT": "opc.tcp://127.0.0.1:48999/oee-stream/sim/",
        "OEE_SIM_MODBUS_CONTROLLER": "tcp://127.0.0.1:15020",
    }
    configs = {c.kind: c for c in load_connectors(REPO / "connectors", env=env)}
    assert configs["opcua"].endpoint == env["OEE_SIM_OPCUA_ENDPOINT"]
    assert configs["modbus"].port == 15020


def test_build_connector_dispatches_on_kind() -> None:
    assert connector_kinds() == ["modbus", "opcua"]
    for cfg in load_connectors(REPO / "connectors", env={}):
        conn = build_connector(cfg, MqttSettings("mqtt://127.0.0.1:1"))
        assert isinstance(conn, Connector)
        assert conn.id == cfg.id and conn.machines == cfg.machines
        assert conn.stats.as_dict()["samples_published"] == 0


# ------------------------------------------------------------------------------------------ env substitution


def test_expand_env_forms() -> None:
    env = {"A": "x", "EMPTY": ""}
    assert expand_env("${A}", env) == "x"
    assert expand_env("pre-${A}-post", env) == "pre-x-post"
    assert expand_env("${B:-dflt}", env) == "dflt"
    assert expand_env("${EMPTY:-dflt}", env) == "dflt"
    assert expand_env("${EMPTY-dflt}", env) == ""
    assert expand_env("${B-dflt}", env) == "dflt"
    assert expand_env("${A:-dflt}", env) == "x"
    assert expand_env("${B:-opc.tcp://h:4840/a/b/}", env) == "opc.tcp://h:4840/a/b/"
    assert expand_env("$${A} $A", env) == "${A} $A"
    with pytest.raises(EnvSubstError, match="B is not set"):
        expand_env("${B}", env)
    with pytest.raises(EnvSubstError, match="malformed"):
        expand_env("${1abc}", env)


def test_env_substitution_in_numbers_and_nested_fields() -> None:
    cfg = parse_connector(
        modbus(slave_id="${SLAVE:-7}", controller="tcp://${HOST:-127.0.0.1}:${PORT}"),
        env={"PORT": "1502"},
    )
    assert isinstance(cfg, ModbusConfig)
    assert cfg.slave_id == 7 and cfg.host == "127.0.0.1" and cfg.port == 1502


def test_unset_variable_error_names_file_and_field() -> None:
    msg = error_of(opcua(endpoint="${NOPE}"), "connectors/ua.yaml")
    assert "connectors/ua.yaml" in msg and "endpoint" in msg and "NOPE is not set" in msg
    msg = error_of(opcua(nodes=[{"node_id": "${X}", "machine": "m", "signal": "s"}]))
    assert "nodes.0.node_id" in msg


def test_unset_variables_do_not_hide_the_other_errors() -> None:
    msg = error_of(opcua(publishing_interval_ms=-1, username="${OEE_QA_U}"), "ua.yaml")
    assert msg.splitlines() == [
        "2 problems:",
        "  ua.yaml: username: environment variable OEE_QA_U is not set (give a default: ${OEE_QA_U:-value})",
        "  ua.yaml: publishing_interval_ms: -1 is not allowed; it should be greater than 0",
    ]
    # the checks across fields run on the placeholder too
    assert error_of(opcua(username="${OEE_QA_U}"), "ua.yaml").splitlines()[1:] == [
        "  ua.yaml: username: environment variable OEE_QA_U is not set (give a default: ${OEE_QA_U:-value})",
        "  ua.yaml: password: give both username and password, or neither",
    ]
    # Nothing about the placeholders themselves: not the endpoint or machines they stand in for, not two
    # unset machines taken for one machine given twice.
    msg = error_of(opcua(endpoint="opc.tcp://${HOST}:${PORT}/x", node_groups=[{"nodes": [
        {"node_id": "ns=2;s=a", "machine": "${M1}", "signal": "state"},
        {"node_id": "${NID}", "machine": "${M2}", "signal": "state"}]}], security_policy="${POLICY}",
        reconnect_initial_s="${R}"), "ua.yaml")
    assert msg.splitlines()[1:] == [
        f"  ua.yaml: {where}: environment variable {var} is not set (give a default: ${{{var}:-value}})"
        for where, var in [("endpoint", "HOST"), ("endpoint", "PORT"), ("node_groups.0.nodes.0.machine", "M1"),
                           ("node_groups.0.nodes.1.node_id", "NID"), ("node_groups.0.nodes.1.machine", "M2"),
                           ("security_policy", "POLICY"), ("reconnect_initial_s", "R")]
    ]
    # nor a check across fields that fails only because of a placeholder's value
    assert error_of(opcua(reconnect_initial_s="${R}", reconnect_max_s=0.5), "ua.yaml") == (
        "ua.yaml: reconnect_initial_s: environment variable R is not set (give a default: ${R:-value})")
    # an unset kind leaves nothing to validate against
    assert error_of(opcua(kind="${KIND}", timeout_s=0), "ua.yaml") == (
        "ua.yaml: kind: environment variable KIND is not set (give a default: ${KIND:-value})")


# ------------------------------------------------------------------------------------------ validation errors


def test_unknown_kind_lists_allowed_kinds() -> None:
    msg = error_of({"kind": "s7", "id": "x", "site": "s"}, "connectors/s7.yaml")
    assert "connectors/s7.yaml" in msg and "kind" in msg and "'modbus'" in msg and "'opcua'" in msg
    msg = error_of({"id": "x"})
    assert "kind: required field is missing" in msg


def test_unknown_key_names_file_and_field() -> None:
    msg = error_of(opcua(publish_interval=100), "connectors/ua.yaml")
    assert msg == "connectors/ua.yaml: publish_interval: unknown key; did you mean 'publishing_interval_ms'?"


def test_bad_security_policy_names_allowed_values() -> None:
    msg = error_of(opcua(security_policy="Basic128Rsa15"))
    assert "security_policy" in msg
    for allowed in ("'None'", "'Basic256Sha256'", "'Aes128_Sha256_RsaOaep'", "'Aes256_Sha256_RsaPss'"):
        assert allowed in msg


def test_security_policy_and_mode_must_fit() -> None:
    msg = error_of(opcua(security_policy="Basic256Sha256"))
    assert "security_mode" in msg and "SignAndEncrypt" in msg
    msg = error_of(opcua(security_policy="Basic256Sha256", security_mode="Sign"))
    assert "certificate and private_key" in msg
    # Never trust on first use: a secured connection needs the server's certificate pinned.
    msg = error_of(opcua(security_policy="Aes256_Sha256_RsaPss", security_mode="Sign", certificate="c.der",
                         private_key="k.pem"))
    assert "server_certificate" in msg and "never trusted on first use" in msg
    cfg = parse_connector(
        opcua(security_policy="Basic256Sha256", security_mode="SignAndEncrypt", certificate="c.der",
              private_key="k.pem", server_certificate="s.der", username="u", password="p"),
        env={},
    )
    assert isinstance(cfg, OpcUaConfig) and cfg.security_mode == "SignAndEncrypt"
    assert "username and password" in error_of(opcua(username="u"))


def test_bad_endpoint_and_node_id() -> None:
    assert "opc.tcp://host:port/path" in error_of(opcua(endpoint="http://x"))
    msg = error_of(opcua(nodes=[{"node_id": "ns=x;q=1", "machine": "press-1", "signal": "state"}]))
    assert "nodes.0.node_id" in msg and "not an OPC UA NodeId" in msg


@pytest.mark.parametrize(("node_id", "why"), [
    # asyncua parses all of these; none names a node the server can have
    ("ns=70000;i=1", "the namespace index '70000' is not allowed; expected a whole number 0..65535 (UInt16)"),
    ("ns=2;i=-5", "the numeric identifier '-5' is not allowed; expected a whole number 0..4294967295 (UInt32)"),
    ("i=99999999999", "the numeric identifier '99999999999' is not allowed; expected a whole number 0..4294967295"),
    ("ns=2;s=", "the string identifier after s= is empty"),
    ("ns=2;b=%%%", "the opaque identifier '%%%' is not allowed; expected base64 (b=aGVsbG8=) or hex (b=0x68656c6c6f)"),
    ("nsu=;s=x", "the namespace URI after nsu= is empty"),
    (" ns=2;s=x", "it starts or ends with a space; remove it"),
    ("ns=2 ;s=x", "a space around the value of ns= ('2 '); remove it"),
    ("ns=2; s=x", "a space around 's'; remove it"),
    ("ns=2;s= x", "the string identifier starts with a space; remove it"),
    ("ns=2;g=abc", "the GUID 'abc' is not valid"),
    ("nsu=urn:x;ns=2;s=a", "give the namespace by index (ns=) or by URI (nsu=), not both"),
    ("srv=1;ns=2;s=a", "srv= (a node of another server) is not supported"),
])
def test_node_ids_that_cannot_work_are_errors(node_id: str, why: str) -> None:
    msg = error_of(opcua(nodes=[{"node_id": node_id, "machine": "press-1", "signal": "state"}]), "ua.yaml")
    assert msg.startswith(f"ua.yaml: nodes.0.node_id: {node_id!r} is not an OPC UA NodeId: {why}"), msg


@pytest.mark.parametrize("node_id", [
    "ns=65535;i=4294967295", "i=0", "s=x", "ns=2;s=press 1.State", "ns=2;s=a;b=c", "nsu=urn:vendor:plc;s=press-1.State",
    "ns=2;g=09087e75-8e5e-499b-954f-f2a9603db28a", "ns=2;b=aGVsbG8=", "ns=2;b=0x6869",
])
def test_node_ids_that_work(node_id: str) -> None:
    parse_connector(opcua(nodes=[{"node_id": node_id, "machine": "press-1", "signal": "state"}]), env={})


@pytest.mark.parametrize(("endpoint", "why"), [
    ("opc.tcp://10.0.4.20:484000", "the port 484000 is out of range 1..65535"),
    ("opc.tcp://10.0.4.20:48a0", "the port '48a0' is not a number 1..65535"),
    ("opc.tcp://10.0.4.20 :4840", "contains a space; remove it"),
    ("opc.tcp://10.0.4.20:0", "the port 0 is out of range 1..65535"),
    ("opc.tcp://10.0.4.20:/", "the port after ':' is empty"),
])
def test_endpoint_port_must_be_1_to_65535(endpoint: str, why: str) -> None:
    assert error_of(opcua(endpoint=endpoint), "ua.yaml") == (
        f"ua.yaml: endpoint: {endpoint!r}: {why}; expected opc.tcp://host:port/path")
    # 48400 is a valid port (a typo for 4840 cannot be told from a server listening there)
    for ok in ("opc.tcp://10.0.4.20:48400", "opc.tcp://10.0.4.20", "opc.tcp://[fe80::1]:4840/ua"):
        parse_connector(opcua(endpoint=ok), env={})


def test_empty_values_say_they_are_empty() -> None:
    assert error_of(opcua(security_policy=None), "ua.yaml") == (
        "ua.yaml: security_policy: the value is empty; expected one of 'None', 'Basic256Sha256', "
        "'Aes128_Sha256_RsaOaep', 'Aes256_Sha256_RsaPss' (leave the key out for the default 'None')")
    assert error_of(opcua(timeout_s=None), "ua.yaml") == (
        "ua.yaml: timeout_s: the value is empty; expected a number (leave the key out for the default 5.0)")
    assert error_of(opcua(kind=None), "ua.yaml") == "ua.yaml: kind: the value is empty; allowed: ['modbus', 'opcua']"
    # where null means "not given", it still does
    parse_connector(opcua(username=None, password=None, nodes=[
        {"node_id": "ns=2;s=a", "machine": "press-1", "signal": "state", "deadband": None}]), env={})


def test_empty_groups_say_what_is_needed() -> None:
    assert error_of(opcua(node_groups=[{"nodes": []}]), "ua.yaml") == (
        "ua.yaml: node_groups.0.nodes: the group has no nodes; at least one node is needed")
    assert error_of(modbus(groups=[{"registers": []}]), "mb.yaml") == (
        "mb.yaml: groups.0.registers: the group has no registers; at least one register is needed")


def test_a_connectors_wrapper_is_named() -> None:
    for data in ({"connectors": [opcua()]}, {"connectors": {"ua": opcua()}}, {"line1": opcua()}):
        key = next(iter(data))
        assert error_of(data, "ua.yaml") == (
            f"ua.yaml: {key}: a connector file holds one connector at the top level (kind, id, site, ...), not "
            f"under {key!r}; remove the `{key}:` key and put each connector in a file of its own")
    assert error_of({"id": "x"}, "ua.yaml") == "ua.yaml: kind: required field is missing; allowed: ['modbus', 'opcua']"


def test_missing_nodes_and_duplicate_signals() -> None:
    assert "no nodes" in error_of(opcua(nodes=[]))
    node = {"node_id": "ns=2;s=a", "machine": "press-1", "signal": "state"}
    msg = error_of(opcua(nodes=[node], node_groups=[{"nodes": [dict(node, node_id="ns=2;s=b")]}]))
    assert "node_groups.0.nodes.0" in msg and "already produced by nodes.0" in msg


def test_topic_unsafe_names_rejected() -> None:
    msg = error_of(opcua(nodes=[{"node_id": "ns=2;s=a", "machine": "press/1", "signal": "state"}]))
    assert "nodes.0.machine" in msg
    msg = error_of(opcua(nodes=[{"node_id": "ns=2;s=a", "machine": "press-1", "signal": "_status"}]))
    assert "nodes.0.signal" in msg


def test_node_groups_inherit_intervals() -> None:
    cfg = parse_connector(
        opcua(
            publishing_interval_ms=500, sampling_interval_ms=100, deadband=0.5,
            node_groups=[
                {"name": "slow", "publishing_interval_ms": 5000, "nodes": [
                    {"node_id": "ns=2;s=t", "machine": "press-1", "signal": "temperature"}]},
                {"sampling_interval_ms": 0, "deadband": 0, "nodes": [
                    {"node_id": "ns=2;s=r", "machine": "press-1", "signal": "run"}]},
            ],
        ),
        env={},
    )
    assert isinstance(cfg, OpcUaConfig)
    default, slow, other = cfg.groups()
    assert (default.publishing_interval_ms, default.sampling_interval_ms, default.deadband) == (500, 100, 0.5)
    assert (slow.name, slow.publishing_interval_ms, slow.sampling_interval_ms) == ("slow", 5000, 100)
    assert (other.name, other.publishing_interval_ms, other.sampling_interval_ms, other.deadband) == (
        "group-1", 500, 0, 0)


def test_modbus_register_errors() -> None:
    msg = error_of(modbus(byte_order="ABDC"))
    assert "byte_order" in msg and "'ABCD'" in msg and "'CDAB'" in msg
    msg = error_of(modbus(registers=[{"machine": "furnace-1", "signal": "s", "register": "holdings", "address": 0}]))
    assert "registers.0.register" in msg and "'holding'" in msg and "'coil'" in msg
    msg = error_of(modbus(registers=[{"machine": "furnace-1", "signal": "s", "address": 0, "type": "float"}]))
    assert "registers.0.type" in msg and "'float32'" in msg
    # a PLC REAL is float32: not only the closest spelling, 'float64'
    assert msg.endswith("did you mean 'float32' (a PLC REAL) or 'float64' (an LREAL)?")
    assert error_of(modbus(registers=[{"machine": "furnace-1", "signal": "s", "address": 0, "type": "DINT"}]),
                    ).endswith("did you mean 'int32'?")
    msg = error_of(modbus(registers=[{"machine": "furnace-1", "signal": "s", "address": 70000}]))
    assert "registers.0.address" in msg
    msg = error_of(modbus(registers=[{"machine": "furnace-1", "signal": "s", "register": "coil", "address": 0,
                                      "type": "uint16"}]))
    assert "registers.0" in msg and "type must be 'bool'" in msg
    assert "needs `bit`" in error_of(modbus(registers=[{"machine": "m", "signal": "s", "address": 0, "type": "bit"}]))
    assert "only allowed with type 'bit'" in error_of(
        modbus(registers=[{"machine": "m", "signal": "s", "address": 0, "bit": 3}]))
    assert "tcp://host:port" in error_of(modbus(controller="udp://1.2.3.4:502"))
    assert error_of(modbus(controller="tcp://h:0"), "mb.yaml") == (
        "mb.yaml: controller: 'tcp://h:0': the port 0 is out of range 1..65535; expected tcp://host:port or "
        "rtu-over-tcp://host:port")
    assert error_of(modbus(controller="tcp://h:502/unit/3"), "mb.yaml") == (
        "mb.yaml: controller: 'tcp://h:502/unit/3': '/unit/3' after host:port is not allowed (the unit id goes "
        "in `slave_id`); expected tcp://host:port or rtu-over-tcp://host:port")
    assert error_of(modbus(registers=[{"machine": "m", "signal": "s", "address": 0, "scale": 0}]), "mb.yaml") == (
        "mb.yaml: registers.0.scale: 0 is not allowed: it makes every value 0; expected a non-zero factor "
        "(1 = the raw value)")
    assert "registers.0.offset: inf is not allowed; expected a finite number" in error_of(
        modbus(registers=[{"machine": "m", "signal": "s", "address": 0, "offset": float("inf")}]))
    # reported with the register's other problems, not only once they are fixed
    msg = error_of(modbus(registers=[{"machine": "m", "signal": "s", "address": 0, "type": "REAL", "scale": 0}]))
    assert "registers.0.type: 'REAL' is not allowed" in msg and "registers.0.scale: 0 is not allowed" in msg
    assert "contradicts" in error_of(modbus(controller="tcp://h:502", transmission_mode="RTUoverTCP"))
    assert "groups.0.registers" in error_of(modbus(groups=[{"registers": []}]))


def test_modbus_rtu_over_tcp_and_groups() -> None:
    cfg = parse_connector(
        modbus(controller="rtu-over-tcp://10.0.0.5:4001", poll_interval_ms=250,
               groups=[{"name": "slow", "poll_interval_ms": 5000, "registers": [
                   {"machine": "furnace-1", "signal": "temperature", "address": 7, "type": "float32"}]}]),
        env={},
    )
    assert isinstance(cfg, ModbusConfig)
    assert cfg.rtu_over_tcp and cfg.host == "10.0.0.5" and cfg.port == 4001
    assert [(g.name, g.poll_interval_ms) for g in cfg.poll_groups()] == [("default", 250), ("slow", 5000)]


# ------------------------------------------------------------------------------------------ files and plant


def test_load_directory_and_duplicate_ids(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", opcua())
    write(tmp_path, "b.yml", modbus())
    (tmp_path / "notes.txt").write_text("ignored")
    assert [c.id for c in load_connectors(tmp_path, env={})] == ["ua", "mb"]
    write(tmp_path, "c.yaml", modbus(registers=[{"machine": "caster-1", "signal": "x", "address": 0}]))
    with pytest.raises(ConfigError) as ei:
        load_connectors(tmp_path, env={})
    assert "c.yaml: id: connector id 'mb' is already used by" in str(ei.value) and "b.yml" in str(ei.value)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "bad.yaml", opcua(timeout_s=-1))
    with pytest.raises(ConfigError) as ei:
        load_connectors([p], env={})
    assert str(p) in str(ei.value) and "timeout_s" in str(ei.value)
    (tmp_path / "broken.yaml").write_text("kind: [opcua\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_connectors(tmp_path / "broken.yaml", env={})
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_connectors(tmp_path / "list.yaml", env={})


def test_check_connectors_names_file_field_and_allowed_machines(tmp_path: Path) -> None:
    plant = load_plant(PLANT)
    p = write(tmp_path, "ua.yaml", opcua(nodes=[
        {"node_id": "ns=2;s=a", "machine": "press-1", "signal": "state"},
        {"node_id": "ns=2;s=b", "machine": "press-9", "signal": "total"},
    ]))
    q = write(tmp_path, "mb.yaml", modbus(site="other-site", registers=[
        {"machine": "press-1", "signal": "state", "address": 0}]))
    with pytest.raises(ConfigError) as ei:
        check_connectors(plant, load_connectors([p, q], env={}))
    msg = str(ei.value)
    assert f"{p}: nodes.1.machine: 'press-9' is not a machine of the plant" in msg
    assert "'caster-1'" in msg and "'furnace-1'" in msg
    assert f"{q}: site: 'other-site'" in msg and "'alu-works'" in msg
    assert f"{q}: registers.0: machine 'press-1' signal 'state' is already produced by {p} nodes.0" in msg


def test_every_connector_key_is_documented() -> None:
    """docs/connectors.md has a table row for every key of every connector model (with its YAML name)."""
    from pathlib import Path

    from oee_stream.connectors.config import (
        ModbusConfig,
        ModbusGroup,
        ModbusRegister,
        OpcUaConfig,
        OpcUaNode,
        OpcUaNodeGroup,
        PublishSettings,
    )

    doc = (Path(__file__).resolve().parents[1] / "docs/connectors.md").read_text()
    missing = []
    for model in (OpcUaConfig, OpcUaNode, OpcUaNodeGroup, ModbusConfig, ModbusRegister, ModbusGroup,
                  PublishSettings):
        for name, field in model.model_fields.items():
            key = field.alias or name
            if f"`{key}`" not in doc:
                missing.append(f"{model.__name__}.{key}")
    assert not missing, f"undocumented connector keys: {missing}"


# ------------------------------------------------------------------------------------------ check-config


def check(tmp_path: Path, *files: tuple[str, Any], plant: Path = PLANT) -> ConfigReport:
    """check-config's entry point on a folder holding `files` (name, data or raw text)."""
    folder = tmp_path / "conn"
    folder.mkdir(exist_ok=True)
    for name, data in files:
        if isinstance(data, str):
            (folder / name).write_text(data)
        else:
            write(folder, name, data)
    return check_config_files(plant, folder, env={})


def demo_files() -> list[tuple[str, Any]]:
    return [(f.name, yaml.safe_load(f.read_text())) for f in sorted((REPO / "connectors").glob("*.yaml"))]


def test_modbus_register_span_must_end_at_65535() -> None:
    def reg(address: int, type_: str, **more: Any) -> dict[str, Any]:
        return modbus(registers=[{"machine": "furnace-1", "signal": "t", "address": address, "type": type_, **more}])

    assert error_of(reg(65535, "float32"), "mb.yaml") == (
        "mb.yaml: registers.0.address: float32 at 65535 needs 2 registers, up to 65536, past the last address "
        "65535; the highest address for float32 is 65534")
    assert "the highest address for float64 is 65532" in error_of(reg(65533, "float64"))
    for ok in (reg(65534, "float32"), reg(65532, "float64"), reg(65535, "uint16"), reg(65535, "bit", bit=15)):
        parse_connector(ok, env={})


def test_one_based_register_numbers_warn(tmp_path: Path) -> None:
    mb = modbus(registers=[
        {"machine": "furnace-1", "signal": "state", "address": 40001},
        {"machine": "furnace-1", "signal": "total", "register": "input", "address": 30005, "type": "float32"},
        {"machine": "furnace-1", "signal": "run", "register": "coil", "address": 40001, "type": "bool"},
        {"machine": "furnace-1", "signal": "reject", "address": 39999},
    ])
    report = check(tmp_path, ("mb.yaml", mb))
    src = tmp_path / "conn" / "mb.yaml"
    assert report.ok
    assert [w for w in report.warnings if ".address" in w] == [
        f"{src}: registers.0.address: 40001 looks like a 1-based register number (4xxxx); `address` is the "
        "0-based protocol address, here probably 0",
        f"{src}: registers.1.address: 30005 looks like a 1-based register number (3xxxx); `address` is the "
        "0-based protocol address, here probably 4",
    ]


def test_overlapping_registers_of_one_device_warn(tmp_path: Path) -> None:
    mb = modbus(registers=[
        {"machine": "furnace-1", "signal": "state", "address": 0},
        {"machine": "furnace-1", "signal": "total", "address": 1, "type": "float32"},
        {"machine": "furnace-1", "signal": "input", "address": 3, "type": "float32"},  # right after: fine
        {"machine": "furnace-1", "signal": "reject", "register": "input", "address": 1},  # another kind: fine
        {"machine": "furnace-1", "signal": "run", "address": 0, "type": "bit", "bit": 3},  # a bit of the word: fine
    ], groups=[{"registers": [{"machine": "furnace-1", "signal": "temperature", "address": 2, "type": "float32"}]}])
    report = check(tmp_path, ("mb.yaml", mb))
    src = tmp_path / "conn" / "mb.yaml"
    assert report.ok
    assert [w for w in report.warnings if "overlaps" in w] == [
        f"{src}: groups.0.registers.0.address: holding float32 at 2 (registers 2-3) overlaps registers.1 (holding "
        "float32 at 1 (registers 1-2), furnace-1/total) on the same device; one of the two addresses is probably wrong",
        f"{src}: registers.2.address: holding float32 at 3 (registers 3-4) overlaps groups.0.registers.0 (holding "
        "float32 at 2 (registers 2-3), furnace-1/temperature) on the same device; one of the two addresses is "
        "probably wrong",
    ]


def test_allowed_machines_of_a_broken_plant_are_unique_and_valid(tmp_path: Path) -> None:
    plant = tmp_path / "plant.yaml"
    text = PLANT.read_text()
    # furnace-1 twice and an invalid id: the plant file is broken, its ids are still read
    plant.write_text(text.replace("- id: press-1", "- id: press 1", 1).replace("- id: caster-1", "- id: furnace-1", 1))
    report = check(tmp_path, ("a.yaml", opcua(nodes=[{"node_id": "ns=2;s=a", "machine": "press-1", "signal": "state"}])),
                   plant=plant)
    assert report.plant is None
    assert [e for e in report.errors if "a.yaml" in e] == [
        f"{tmp_path / 'conn' / 'a.yaml'}: nodes.0.machine: 'press-1' is not a machine of the plant; allowed: "
        "['furnace-1']"]


def secured(**over: Any) -> dict[str, Any]:
    return opcua(**{"security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
                    "certificate": "pki/client.der", "private_key": "pki/client.pem",
                    "server_certificate": "/nonexistent/server.der", **over})


def test_certificate_files_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths are opened from the working directory, like asyncua does
    report = check(tmp_path, ("ua.yaml", secured()))
    src = tmp_path / "conn" / "ua.yaml"
    assert report.errors == [
        f"{src}: certificate: 'pki/client.der' does not exist (relative to the working directory {tmp_path})",
        f"{src}: private_key: 'pki/client.pem' does not exist (relative to the working directory {tmp_path})",
        f"{src}: server_certificate: '/nonexistent/server.der' does not exist",
    ]
    with pytest.raises(ConfigError, match=re.escape("certificate: 'pki/client.der' does not exist")):
        check_connectors(load_plant(PLANT), load_connectors(src, env={}))  # `run` refuses to start too
    (tmp_path / "pki").mkdir()
    for name in ("client.der", "client.pem", "server.der"):
        (tmp_path / "pki" / name).write_bytes(b"x")
    report = check(tmp_path, ("ua.yaml", secured(server_certificate=str(tmp_path / "pki"))))
    assert report.errors == [f"{src}: server_certificate: '{tmp_path / 'pki'}' is a folder, not a file"]
    assert check(tmp_path, ("ua.yaml", secured(server_certificate="pki/server.der"))).errors == []


def test_certificates_without_security_are_reported_unused(tmp_path: Path) -> None:
    report = check(tmp_path, ("ua.yaml", opcua(certificate="nope.der")))
    assert report.errors == []
    assert report.warnings[0] == f"{tmp_path / 'conn' / 'ua.yaml'}: certificate: not used, because security_policy is 'None'"


def test_misspelt_engine_signals_warn_other_names_do_not(tmp_path: Path) -> None:
    ua = opcua(nodes=[
        {"node_id": "ns=2;s=a", "machine": "press-1", "signal": "State"},
        {"node_id": "ns=2;s=b", "machine": "press-1", "signal": "totl"},
        {"node_id": "ns=2;s=c", "machine": "press-1", "signal": "oil_temperature"},
        {"node_id": "ns=2;s=d", "machine": "press-1", "signal": "status"},
    ])
    report = check(tmp_path, ("ua.yaml", ua))
    src = tmp_path / "conn" / "ua.yaml"
    engine = "(state, run, total, reject, input, product, good, startup_reject)"
    assert report.ok
    assert [w for w in report.warnings if ".signal" in w] == [
        f"{src}: nodes.0.signal: 'State' is not an engine signal {engine}; did you mean 'state'? "
        "(other names are stored but not used for KPIs)",
        f"{src}: nodes.1.signal: 'totl' is not an engine signal {engine}; did you mean 'total'? "
        "(other names are stored but not used for KPIs)",
    ]


def test_machines_without_their_state_signal_warn(tmp_path: Path) -> None:
    files = [f for f in demo_files() if f[0] != "modbus-demo.yaml"]
    report = check(tmp_path, *files)
    assert report.ok
    assert report.warnings == [
        f"{PLANT}: lines.1.machines.0: machine 'furnace-1' has no connector producing 'state' (needed by "
        "state_source: state_code); its time will be unknown"]


def test_state_source_signal_follows_the_machine(tmp_path: Path) -> None:
    text = PLANT.read_text()
    plant = tmp_path / "plant.yaml"
    plant.write_text(text.replace("state_table: press\n", "state_table: press\n        state_source: run_bit\n")
                     .replace("state_table: caster\n", "state_source: counts\n"))
    report = check(tmp_path, *demo_files(), plant=plant)
    assert report.ok
    assert [w for w in report.warnings if "has no connector producing" in w] == [  # caster-1 (counts) has its `total`
        f"{plant}: lines.0.machines.0: machine 'press-1' has no connector producing 'run' (needed by "
        "state_source: run_bit); its time will be unknown; it does get 'state': did you mean state_source: state_code?"]


def test_no_coverage_warnings_while_a_connector_file_is_broken(tmp_path: Path) -> None:
    report = check(tmp_path, ("opcua-demo.yaml", demo_files()[1][1]), ("modbus-demo.yaml", "kind: modbus\nid: [\n"))
    assert len(report.errors) == 1 and report.errors[0].startswith(f"{tmp_path / 'conn' / 'modbus-demo.yaml'}:3:1: not valid YAML")
    assert report.warnings == []


def test_connector_files_in_any_case_are_loaded(tmp_path: Path) -> None:
    (name_a, a), (name_b, b) = demo_files()
    report = check(tmp_path, (name_a.replace(".yaml", ".YAML"), a), (name_b.replace(".yaml", ".Yml"), b),
                   ("notes.txt", "not a connector"))
    assert report.ok and report.warnings == []
    assert [f.name for f in report.connector_files] == ["modbus-demo.YAML", "opcua-demo.Yml"]


def test_missing_and_empty_connector_folders(tmp_path: Path) -> None:
    report = check_config_files(PLANT, tmp_path / "connectorz", env={})
    assert report.errors == [f"{tmp_path / 'connectorz'}: no such folder"]
    with pytest.raises(ConfigError, match="no such folder"):
        load_connectors(tmp_path / "connectorz", env={})
    with pytest.raises(ConfigError, match="file not found"):
        load_connectors(tmp_path / "ua.yaml", env={})
    report = check(tmp_path)
    assert report.ok
    assert report.warnings == [f"{tmp_path / 'conn'}: no connector files (*.yaml, *.yml); no machine gets data"]


def test_every_problem_in_every_connector_file(tmp_path: Path) -> None:
    report = check(
        tmp_path,
        ("a.yaml", opcua(endpoint="${EP}", username="${USER}", timeout_s=0, nodes=[
            {"node_id": "ns=2;s=a", "machine": "press-9", "signal": "state"}])),
        ("b.yaml", "kind: modbus\nid: b\nid: c\n"),
        ("c.yaml", ""),
        ("d.yaml", modbus(kind="modbuss")),
        ("e.yaml", modbus(site="alu-work", registers=[{"machine": "presss-1", "signal": "state", "address": 0}])),
    )
    conn = tmp_path / "conn"
    assert report.errors == [
        f"{conn / 'a.yaml'}: endpoint: environment variable EP is not set (give a default: ${{EP:-value}})",
        f"{conn / 'a.yaml'}: username: environment variable USER is not set (give a default: ${{USER:-value}})",
        f"{conn / 'a.yaml'}: timeout_s: 0 is not allowed; it should be greater than 0",
        f"{conn / 'b.yaml'}: id: defined twice (lines 2, 3); YAML would keep only the last",
        f"{conn / 'b.yaml'}: site: required field is missing",
        f"{conn / 'b.yaml'}: controller: required field is missing",
        f"{conn / 'c.yaml'}: the file is empty; expected a connector definition (a mapping with kind, id, site, ...)",
        f"{conn / 'd.yaml'}: kind: 'modbuss' is not a connector kind; allowed: ['modbus', 'opcua']; did you mean 'modbus'?",
        f"{conn / 'e.yaml'}: site: 'alu-work' is not the plant's site; allowed: ['alu-works']",
        f"{conn / 'e.yaml'}: registers.0.machine: 'presss-1' is not a machine of the plant; allowed: "
        "['caster-1', 'furnace-1', 'press-1']; did you mean 'press-1'?",
    ]


def test_connectors_are_checked_against_the_machines_of_a_broken_plant_file(tmp_path: Path) -> None:
    """The plant file has errors, so there is no plant model; its machine ids can still be read from the
    YAML, and the connectors' machines and producers are checked against them in the same run."""
    plant = tmp_path / "plant.yaml"
    plant.write_text(PLANT.read_text().replace("allowed_lateness_s: 300", "allowed_lateness_s: soon", 1))
    report = check(
        tmp_path,
        ("a.yaml", opcua(site="alu-work", nodes=[
            {"node_id": "ns=2;s=a", "machine": "presss-1", "signal": "state"},
            {"node_id": "ns=2;s=b", "machine": "press-1", "signal": "state"}])),
        ("b.yaml", modbus(registers=[{"machine": "press-1", "signal": "state", "address": 0}])),
        plant=plant,
    )
    conn = tmp_path / "conn"
    assert report.plant is None
    assert report.errors == [
        f"{plant}: policies.allowed_lateness_s: 'soon' is not a number",
        f"{conn / 'a.yaml'}: nodes.0.machine: 'presss-1' is not a machine of the plant; allowed: "
        "['caster-1', 'furnace-1', 'press-1']; did you mean 'press-1'?",
        f"{conn / 'b.yaml'}: registers.0: machine 'press-1' signal 'state' is already produced by "
        f"{conn / 'a.yaml'} nodes.1",
    ]  # the site needs a valid plant; which machine lacks its state signal too
    assert report.warnings == []


@pytest.mark.parametrize("edit", [
    ("- id: press-1", "- id: 101"),  # one machine's id is not text: any machine may be that one
    ("lines:", "lines: {}\nold_lines:"),  # the lines cannot be read at all
])
def test_no_machine_check_when_the_machine_ids_cannot_be_read(tmp_path: Path, edit: tuple[str, str]) -> None:
    plant = tmp_path / "plant.yaml"
    text = PLANT.read_text()
    assert edit[0] in text
    plant.write_text(text.replace(*edit, 1))
    report = check(tmp_path, ("a.yaml", opcua(nodes=[{"node_id": "ns=2;s=a", "machine": "presss-1",
                                                      "signal": "state"}])), plant=plant)
    assert report.errors and report.plant is None
    assert not [e for e in report.errors if "a.yaml" in e]


def test_model_checks_report_all_their_problems() -> None:
    msg = error_of(opcua(security_policy="Basic256Sha256", username="u", reconnect_initial_s=5, reconnect_max_s=1),
                   "ua.yaml")
    assert msg.splitlines() == [
        "6 problems:",
        "  ua.yaml: reconnect_max_s: 1.0 is less than reconnect_initial_s (5.0); it must be >= it",
        "  ua.yaml: security_mode: security_policy 'Basic256Sha256' and security_mode 'None' do not fit: both 'None', "
        "or a policy (Basic256Sha256|Aes128_Sha256_RsaOaep|Aes256_Sha256_RsaPss) with a mode (Sign|SignAndEncrypt)",
        "  ua.yaml: certificate: security_policy 'Basic256Sha256' needs certificate and private_key",
        "  ua.yaml: private_key: security_policy 'Basic256Sha256' needs certificate and private_key",
        "  ua.yaml: server_certificate: security_policy 'Basic256Sha256' needs the server's certificate (exported "
        "from the server, DER or PEM); it is pinned, never trusted on first use",
        "  ua.yaml: password: give both username and password, or neither",
    ]
