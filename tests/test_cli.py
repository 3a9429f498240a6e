"""The command line turns what a user can get wrong into one line `error: ...` on stderr with exit code 2,
never a traceback: missing and malformed files, bad URLs and endpoints, servers that are not there."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog
from typer.testing import CliRunner, Result

from oee_stream.cli import _redact, app
from oee_stream.embedded import free_port

REPO = Path(__file__).resolve().parents[1]
SITE = "alu-works"  # site.id of deploy/demo/plant.yaml
T0 = 1763717936.0


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    # Commands configure logging onto the runner's stderr, which is closed after the invocation.
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def plant_file(tmp_path: Path) -> Path:
    return Path(shutil.copy(REPO / "deploy" / "demo" / "plant.yaml", tmp_path / "plant.yaml"))


def cli(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    r = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    return r


def fails(r: Result, *parts: str) -> str:
    """The one error line, checked to contain `parts`."""
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


def nothing_listening() -> int:
    return free_port()  # bound and closed again: connecting is refused


def _line(t: float, topic: str, payload: object) -> bytes:
    body = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    return orjson.dumps({"t": t, "topic": topic, "payload": body}) + b"\n"


def _recording(path: Path) -> Path:
    path.write_bytes(
        _line(T0, f"oee/v1/{SITE}/press-1/state", {"v": 1, "samples": [{"ts": T0, "value": 1}]})
        + _line(T0 + 1, f"oee/v1/{SITE}/press-1/total", {"v": 1, "samples": [{"ts": T0 + 1, "value": 5}]})
        + _line(T0 + 2, f"oee/v1/{SITE}/press-1/total", "not json")
        + _line(T0 + 3, f"oee/v1/{SITE}/nope-9/total", {"v": 1, "samples": [{"ts": T0 + 3, "value": 5}]}))
    return path


# ------------------------------------------------------------------------------------------------ replay


def test_replay_missing_log(tmp_path: Path, plant_file: Path) -> None:
    fails(cli("replay", tmp_path / "nolog.jsonl", "--config", plant_file), "nolog.jsonl: no such file")


def test_replay_text_file_names_the_line(tmp_path: Path, plant_file: Path) -> None:
    log = tmp_path / "g.jsonl"
    log.write_text("hello\n")
    err = fails(cli("replay", log, "--config", plant_file))
    assert err == f"error: {log}:1: not a recorded bus message (not JSON)"


@pytest.mark.parametrize(("line", "reason"), [
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"t": "x", "topic": "a", "payload": "b"}\n', "'t' must be the receive time in epoch seconds, got 'x'"),
    (b'{"t": 1}\n', "no 'topic'"),
    (b'{"t": 1, "topic": "a", "payload": {"v": 1}}\n', "'payload' must be a string"),
])
def test_replay_bad_recording_line(tmp_path: Path, plant_file: Path, line: bytes, reason: str) -> None:
    log = tmp_path / "bad.jsonl"
    log.write_bytes(_line(T0, f"oee/v1/{SITE}/press-1/state", {"v": 1, "samples": [{"ts": T0, "value": 1}]}) + line)
    fails(cli("replay", log, "--config", plant_file), f"{log}:2: not a recorded bus message ({reason})")


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_replay_empty_log(tmp_path: Path, plant_file: Path, content: bytes) -> None:
    log = tmp_path / "empty.jsonl"
    log.write_bytes(content)
    fails(cli("replay", log, "--config", plant_file), "empty.jsonl: no bus messages")


def test_replay_counts_dead_letters_like_the_engine(tmp_path: Path, plant_file: Path) -> None:
    r = cli("replay", _recording(tmp_path / "rec.jsonl"), "--config", plant_file, "--window", "15m")
    assert r.exit_code == 0, r.output
    assert "press-1" in r.stdout and "note:" not in r.stdout
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1
    assert "2 dead letter(s) from 4 messages" in notes[0]
    assert "payload is not JSON" in notes[0] and "unknown machine 'nope-9'" in notes[0]


def test_replay_leaves_out_a_cut_last_line(tmp_path: Path, plant_file: Path) -> None:
    log = _recording(tmp_path / "rec.jsonl")
    with log.open("ab") as f:
        f.write(b'{"t": 17637179')  # the recorder was killed mid-write
    r = cli("replay", log, "--config", plant_file, "--json")
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout)
    assert f"note: {log}:5: incomplete last line left out" in r.stderr


def test_replay_unknown_window(tmp_path: Path, plant_file: Path) -> None:
    fails(cli("replay", _recording(tmp_path / "rec.jsonl"), "--config", plant_file, "--window", "15min"),
          "--window: '15min' is not a window; allowed: ", "15m")


def test_replay_missing_plant(tmp_path: Path) -> None:
    fails(cli("replay", _recording(tmp_path / "rec.jsonl"), "--config", tmp_path / "nope.yaml"),
          "nope.yaml: file not found")


def test_replay_in_a_real_process_prints_no_traceback(tmp_path: Path, plant_file: Path) -> None:
    log = tmp_path / "g.jsonl"
    log.write_text("hello\n")
    p = subprocess.run([sys.executable, "-m", "oee_stream.cli", "replay", str(log), "--config", str(plant_file)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: {log}:1: not a recorded bus message (not JSON)"
    assert p.stdout == ""


# ------------------------------------------------------------------------------------------------ record


def test_record_missing_plant(tmp_path: Path) -> None:
    fails(cli("record", tmp_path / "out.jsonl", "--config", tmp_path / "nope.yaml", "--seconds", "1"),
          "nope.yaml: file not found")


def test_record_bad_mqtt_url(tmp_path: Path, plant_file: Path) -> None:
    fails(cli("record", tmp_path / "out.jsonl", "--config", plant_file, "--mqtt-url", "mqtt://user:pw@host:abc"),
          "--mqtt-url: 'mqtt://user:***@host:abc' is not an MQTT broker URL; expected mqtt://host:port")


def test_record_without_a_broker(tmp_path: Path, plant_file: Path) -> None:
    url = f"mqtt://127.0.0.1:{nothing_listening()}"
    fails(cli("record", tmp_path / "out.jsonl", "--config", plant_file, "--mqtt-url", url,
              "--connect-timeout", "0.5", "--seconds", "1"),
          f"no MQTT broker answered at {url} within 0.5 s")


def test_record_unwritable_output(tmp_path: Path, plant_file: Path) -> None:
    (tmp_path / "out").mkdir()
    fails(cli("record", tmp_path / "out", "--config", plant_file, "--seconds", "1"), "out: cannot write")


def test_record_for_a_while(tmp_path: Path, plant_file: Path, mqtt_url: str) -> None:
    out = tmp_path / "out.jsonl"
    r = cli("record", out, "--config", plant_file, "--mqtt-url", mqtt_url, "--seconds", "0.3")
    assert r.exit_code == 0, r.output
    # The shared test broker may hold retained messages of the demo site from earlier tests.
    n = len(out.read_bytes().splitlines()) if out.exists() else 0
    assert f"recorded {n} messages to {out}" in r.stdout


# ---------------------------------------------------------------------------------------------- simulate


def test_simulate_missing_scenario(tmp_path: Path, plant_file: Path) -> None:
    fails(cli("simulate", "--config", plant_file, "--scenario", tmp_path / "nope.yaml"), "nope.yaml: file not found")


def test_simulate_port_in_use(tmp_path: Path, plant_file: Path) -> None:
    scenario = shutil.copy(REPO / "simulators" / "demo.yaml", tmp_path / "demo.yaml")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fails(cli("simulate", "--config", plant_file, "--scenario", scenario, "--opcua-port", str(port),
                  "--modbus-port", str(free_port())),
              f"--opcua-port: port {port} is already in use")


# ------------------------------------------------------------------------------------------ opcua browse


def test_browse_connection_refused() -> None:
    endpoint = f"opc.tcp://127.0.0.1:{nothing_listening()}"
    assert fails(cli("opcua", "browse", endpoint, "--timeout", "2")) == f"error: {endpoint}: connection refused"


def test_browse_silent_server_times_out() -> None:
    with socket.socket() as silent:  # accepts the connection (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        endpoint = f"opc.tcp://127.0.0.1:{silent.getsockname()[1]}"
        fails(cli("opcua", "browse", endpoint, "--timeout", "0.3"), f"{endpoint}: no answer within 0.3 s")


@pytest.mark.parametrize(("endpoint", "hint"), [
    ("10.0.0.1:4840", ""),
    ("http://10.0.0.1:4840", ""),
    ("opc.tcp://plc1", " (servers usually listen on 4840)"),
    ("opc.tcp://plc1:port", ""),
])
def test_browse_malformed_endpoint(endpoint: str, hint: str) -> None:
    err = fails(cli("opcua", "browse", endpoint))
    assert err == f"error: {endpoint!r} is not an OPC UA endpoint; expected opc.tcp://host:port{hint}"


@pytest.fixture
def username_only_server() -> Iterator[str]:
    """An OPC UA server that refuses anonymous sessions, in its own thread and event loop."""
    from asyncua import Server

    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim/"
    up, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        server = Server()
        await server.init()
        server.set_endpoint(endpoint)
        server.set_security_IDs(["Username"])
        async with server:
            up.set()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert up.wait(30), "the OPC UA test server did not start"
    yield endpoint
    stop.set()
    thread.join(10)


def test_browse_server_refuses_anonymous(username_only_server: str) -> None:
    fails(cli("opcua", "browse", username_only_server, "--timeout", "5"),
          f"{username_only_server}: the server answered BadIdentityTokenRejected",
          "(browse connects anonymously and without security)")


# -------------------------------------------------------------------------------- database and services


def test_migrate_bad_database_url() -> None:
    fails(cli("migrate", "--database-url", "bogus"),
          "--database-url: 'bogus' is not a PostgreSQL database URL; expected postgresql://")


def test_migrate_unreachable_database_hides_the_password() -> None:
    url = f"postgresql://oee:s3cret@127.0.0.1:{nothing_listening()}/oee"
    err = fails(cli("migrate", "--database-url", url), "cannot use database postgresql://oee:***@127.0.0.1:",
                "Connection refused")
    assert "s3cret" not in err


def test_api_key_commands_unreachable_database() -> None:
    url = f"postgresql://oee:s3cret@127.0.0.1:{nothing_listening()}/oee"
    err = fails(cli("api-key", "revoke", "abc", "--database-url", url), "cannot use database", "Connection refused")
    assert "s3cret" not in err
    fails(cli("api-key", "create", "--name", "x", "--role", "admin", "--database-url", "bogus"),
          "'bogus' is not a PostgreSQL database URL")


def test_api_key_bad_role_is_refused_by_the_parser() -> None:
    r = cli("api-key", "create", "--name", "x", "--role", "boss", "--database-url", "postgresql://h/db")
    assert r.exit_code == 2
    assert "unknown role 'boss'" in r.stderr


def test_api_key_create_before_migrate(fresh_db_url: str) -> None:
    fails(cli("api-key", "create", "--name", "it admin", "--role", "admin", "--database-url", fresh_db_url),
          "has no oee-stream schema; run `oee-stream migrate` first")


_SETTINGS_ERRORS = [
    ({"OEE_TICK_S": "0"}, "OEE_TICK_S: Input should be greater than 0 (got '0')"),
    ({"OEE_MQTT_URL": "mqtt://broker:abc"}, "OEE_MQTT_URL: 'mqtt://broker:abc' is not an MQTT broker URL"),
    ({"OEE_MQTT_URL": "mqtt://127.0.0.1:1883", "OEE_DATABASE_URL": "bogus"},
     "OEE_DATABASE_URL: 'bogus' is not a PostgreSQL database URL"),
]


@pytest.mark.parametrize(("command", "env", "message"), [
    *[("run", e, m) for e, m in _SETTINGS_ERRORS],
    *[("demo", e, m) for e, m in _SETTINGS_ERRORS],
    *[("connectors", e, m) for e, m in _SETTINGS_ERRORS[:2]],  # the connectors use no database
])
def test_service_settings_errors(plant_file: Path, command: str, env: dict[str, str], message: str) -> None:
    fails(cli(command, "--config", plant_file, env=env), message)


def test_mqtt_url_schemes() -> None:
    from oee_stream.bus import MqttSettings
    from oee_stream.cli import _check_mqtt_url

    for url in ("mqtt://b:1883", "tcp://b:1883", "mqtts://b", "ssl://b"):  # tcp/ssl: paho's names
        _check_mqtt_url(url, "OEE_MQTT_URL")
    assert (MqttSettings("tcp://b").port, MqttSettings("tcp://b").tls) == (1883, False)
    assert (MqttSettings("ssl://b").port, MqttSettings("ssl://b").tls) == (8883, True)
    fails(cli("connectors", "--config", REPO / "deploy" / "demo" / "plant.yaml", env={"OEE_MQTT_URL": "ws://b:9001"}),
          "OEE_MQTT_URL: 'ws://b:9001' is not an MQTT broker URL; expected mqtt://host:port or mqtts://host:port "
          "(TLS); tcp:// and ssl:// mean the same")


def _edge_env(tmp_path: Path) -> dict[str, str]:
    """Nothing listens at the PLCs' and the broker's addresses: the connectors start and keep retrying."""
    return {"OEE_DATA_DIR": str(tmp_path / "var"), "OEE_MQTT_URL": f"mqtt://127.0.0.1:{nothing_listening()}",
            "OEE_SIM_OPCUA_ENDPOINT": f"opc.tcp://127.0.0.1:{nothing_listening()}/oee-stream/sim/",
            "OEE_SIM_MODBUS_CONTROLLER": f"tcp://127.0.0.1:{nothing_listening()}"}


def test_connectors_spool_in_use(tmp_path: Path, plant_file: Path) -> None:
    """Two `oee-stream connectors` on one data directory: the second stops with the spool's path, exit 2."""
    from oee_stream.connectors.spool import DiskSpool

    env = _edge_env(tmp_path)
    spool = tmp_path / "var" / "spool" / "opcua-demo"
    with DiskSpool(spool):
        err = fails(cli("connectors", "--config", plant_file, "--connectors", REPO / "connectors", env=env))
    assert err == (f"error: connector 'opcua-demo': spool {spool} is in use by another process (two connectors with "
                   "the same id, or the same spool_dir?); is another `oee-stream connectors` or `run` with "
                   f"OEE_DATA_DIR={tmp_path / 'var'} running?")


def test_connectors_spool_dir_is_a_file(tmp_path: Path, plant_file: Path) -> None:
    conn = tmp_path / "conn"
    conn.mkdir()
    in_the_way = tmp_path / "spool"
    in_the_way.write_text("not a folder")
    text = (REPO / "connectors" / "modbus-demo.yaml").read_text()
    (conn / "modbus-demo.yaml").write_text(text.replace("publish:\n", f"publish:\n  buffer: disk\n  spool_dir: {in_the_way}\n"))
    fails(cli("connectors", "--config", plant_file, "--connectors", conn, env=_edge_env(tmp_path)),
          f"error: connector 'modbus-demo': cannot create spool directory {in_the_way}:",
          "a file is in the way: point publish.spool_dir (or OEE_DATA_DIR) at a folder")


def test_run_unreachable_database(tmp_path: Path, plant_file: Path) -> None:
    env = {"OEE_DATABASE_URL": f"postgresql://oee:s3cret@127.0.0.1:{nothing_listening()}/oee",
           "OEE_MQTT_URL": f"mqtt://127.0.0.1:{nothing_listening()}", "OEE_API_PORT": str(free_port()),
           "OEE_DATA_DIR": str(tmp_path / "var")}
    err = fails(cli("run", "--config", plant_file, "--connectors", tmp_path, env=env),
                "cannot use database postgresql://oee:***@127.0.0.1:")
    assert "s3cret" not in err


def test_run_without_a_broker(tmp_path: Path, plant_file: Path, database_url: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from oee_stream import service

    monkeypatch.setattr(service, "BROKER_CONNECT_TIMEOUT_S", 0.5)
    port = nothing_listening()
    env = {"OEE_DATABASE_URL": database_url, "OEE_MQTT_URL": f"mqtt://127.0.0.1:{port}",
           "OEE_API_PORT": str(free_port()), "OEE_DATA_DIR": str(tmp_path / "var")}
    (tmp_path / "conn").mkdir()
    fails(cli("run", "--config", plant_file, "--connectors", tmp_path / "conn", env=env),
          f"the MQTT broker 127.0.0.1:{port} did not answer within 0.5 s", "OEE_MQTT_URL")


@pytest.mark.parametrize("command", ["run", "demo"])
def test_run_and_demo_log_the_check_config_warnings_at_start(tmp_path: Path, plant_file: Path, command: str) -> None:
    """What check-config warns about reaches the service's log once at start-up, one warning event each,
    before anything is connected to (here the database is not there, so the start stops right after)."""
    plant_file.write_text(plant_file.read_text().replace('{name: late, start: "14:00"', '{name: late, start: "13:00"'))
    conn = tmp_path / "conn"
    conn.mkdir()
    modbus = (REPO / "connectors" / "modbus-demo.yaml").read_text()
    (conn / "modbus-demo.yaml").write_text(modbus.replace("address: 0, type: uint16}", "address: 40001, type: uint16}"))
    check = cli("check-config", "--config", plant_file, "--connectors", conn)
    assert check.exit_code == 0, check.output
    printed = [ln.removeprefix("warning: ") for ln in check.stderr.splitlines()]
    assert printed == [
        f"{plant_file}: calendars.default.shifts.1: shift 'late' overlaps shift 'early' (shifts.0) on mon "
        "13:00-14:00; time covered twice counts once, a break only where every covering shift has one",
        f"{conn / 'modbus-demo.yaml'}: groups.0.registers.0.address: 40001 looks like a 1-based register number "
        "(4xxxx); `address` is the 0-based protocol address, here probably 0",
        f"{plant_file}: lines.0.machines.0: machine 'press-1' has no connector producing 'state' (needed by "
        "state_source: state_code); its time will be unknown",
        f"{plant_file}: lines.1.machines.1: machine 'caster-1' has no connector producing 'state' (needed by "
        "state_source: state_code); its time will be unknown",
    ]
    env = {"OEE_DATABASE_URL": f"postgresql://oee:s3cret@127.0.0.1:{nothing_listening()}/oee",
           "OEE_MQTT_URL": f"mqtt://127.0.0.1:{nothing_listening()}", "OEE_API_PORT": str(free_port()),
           "OEE_DATA_DIR": str(tmp_path / "var"), "OEE_LOG_FORMAT": "json"}
    r = cli(command, "--config", plant_file, "--connectors", conn, env=env)
    fails(r, "cannot use database")
    events = [orjson.loads(ln) for ln in r.stderr.splitlines() if ln.startswith("{")]
    logged = [e for e in events if e["event"] == "config_warning"]
    assert [e["warning"] for e in logged] == printed
    assert {e["level"] for e in logged} == {"warning"}


def test_run_missing_plant(tmp_path: Path) -> None:
    env = {"OEE_PLANT": str(tmp_path / "nope.yaml")}  # read through the environment, as the help says
    fails(cli("run", env=env), "nope.yaml: file not found")


# ------------------------------------------------------------------------------------------------- help


def test_help_shows_defaults_and_variables() -> None:
    out = " ".join(cli("run", "--help", env={"COLUMNS": "200"}).stdout.split())
    assert "[default: deploy/demo/plant.yaml] [env var: OEE_PLANT]" in out
    assert "[default: connectors] [env var: OEE_CONNECTORS]" in out
    create = cli("api-key", "create", "--help", env={"COLUMNS": "200"}).stdout
    assert "[viewer|operator|admin]" in create and "OEE_DATABASE_URL" in create


def test_cli_roles_are_the_api_roles() -> None:
    from oee_stream.api.auth import ROLES as API_ROLES
    from oee_stream.cli import ROLES

    assert ROLES == API_ROLES


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://oee:s3cret@db:5432/oee", "postgresql://oee:***@db:5432/oee"),
    ("postgresql://oee@db/oee", "postgresql://oee@db/oee"),
    ("postgresql://db/oee?password=s3cret&sslmode=require", "postgresql://db/oee?password=***&sslmode=require"),
    ("host=db password='s 3cret' user=oee", "host=db password=*** user=oee"),
    ("mqtt://u:p@a@broker:1883", "mqtt://u:***@broker:1883"),
])
def test_redact(url: str, shown: str) -> None:
    assert _redact(url) == shown

