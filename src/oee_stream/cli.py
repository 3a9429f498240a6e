"""The `oee-stream` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn
from urllib.parse import urlsplit

import typer

from oee_stream.config import load_plant
from oee_stream.config_files import ConfigError
from oee_stream.settings import Settings

if TYPE_CHECKING:
    from pydantic import ValidationError

    from oee_stream.replay import Replay

app = typer.Typer(help="oee-stream: real-time OEE for plants.", no_args_is_help=True, add_completion=False)

# The defaults are Settings' (None here lets a .env file still apply); typer reads the same variables.
_DEFAULT_PLANT = Settings.model_fields["plant"].default
_DEFAULT_CONNECTORS = Settings.model_fields["connectors"].default
PlantOpt = Annotated[Path | None, typer.Option(
    "--config", "--plant", envvar="OEE_PLANT", show_envvar=True,
    help=f"plant model YAML \\[default: {_DEFAULT_PLANT}]")]
ConnOpt = Annotated[Path | None, typer.Option(
    "--connectors", envvar="OEE_CONNECTORS", show_envvar=True,
    help=f"folder of connector YAML files \\[default: {_DEFAULT_CONNECTORS}]")]
# simulate, record and replay are tools run by hand next to a recording or a scenario; they take the
# plant model from the command line only (docs/configuration.md).
ToolPlantOpt = Annotated[Path, typer.Option("--config", "--plant", help="plant model YAML (OEE_PLANT is not read)")]
DbOpt = Annotated[str, typer.Option("--database-url", envvar="OEE_DATABASE_URL", show_envvar=True,
                                    help="the service's PostgreSQL database, postgresql://user:password@host:port/db")]


def _settings(plant: Path | None = None, connectors: Path | None = None, **extra: object) -> Settings:
    """The service settings; ConfigError naming the variable for a bad OEE_* value or URL."""
    from pydantic import ValidationError

    from oee_stream.logs import configure

    overrides: dict[str, object] = {k: v for k, v in extra.items() if v is not None}
    if plant is not None:
        overrides["plant"] = plant
    if connectors is not None:
        overrides["connectors"] = connectors
    try:
        s = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError("; ".join(_settings_problems(exc))) from None
    if s.mqtt_url is not None:
        _check_mqtt_url(s.mqtt_url, "OEE_MQTT_URL")
    if s.database_url is not None:
        _check_database_url(s.database_url, "OEE_DATABASE_URL")
    configure(s.log_format, s.log_level)
    return s


def _settings_problems(exc: ValidationError) -> list[str]:
    """One line per bad OEE_* value: the variable, what is wrong, what was given."""
    return [f"OEE_{'_'.join(str(x) for x in e['loc']).upper()}: {e['msg'].removeprefix('Value error, ')} "
            f"(got {e.get('input')!r})" for e in exc.errors()]


def _fail(exc: Exception | str) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


_URL_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def _redact(url: str) -> str:
    """`url` (a database or broker URL, or a libpq key=value string) without its password."""
    url = _URL_PASSWORD.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if sep and at and ":" in userinfo:
        return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}{slash}{path}"
    return url


def _check_mqtt_url(url: str, name: str) -> None:
    u = urlsplit(url)
    try:
        port_ok = u.port is None or u.port > 0
    except ValueError:
        port_ok = False
    # tcp:// and ssl:// are the names paho and other MQTT tools use for mqtt:// and mqtts:// (bus.MqttSettings).
    if u.scheme not in ("mqtt", "mqtts", "ssl", "tcp") or not u.hostname or not port_ok:
        raise ConfigError(f"{name}: {_redact(url)!r} is not an MQTT broker URL; "
                          "expected mqtt://host:port or mqtts://host:port (TLS); tcp:// and ssl:// mean the same")


@contextlib.contextmanager
def _database_errors(url: str | None) -> Iterator[None]:
    """What an operator can fix about the database (its URL, reachability, schema, rights) as one line.

    Anything else from the driver is a bug and keeps its traceback."""
    import psycopg
    from psycopg import errors as pg_errors

    where = f"database {_redact(url)}" if url else "the database"
    try:
        yield
    except pg_errors.UndefinedTable:
        _fail(f"{where} has no oee-stream schema; run `oee-stream migrate` first")
    except pg_errors.InsufficientPrivilege as exc:
        _fail(f"{where}: {str(exc).strip().splitlines()[0]}")
    except psycopg.OperationalError as exc:
        # libpq: "connection failed: connection to server at ... failed: Connection refused\n\tIs the ..."
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(f"cannot use {where}: {first.removeprefix('connection failed: ')}")


def _check_database_url(url: str, name: str = "--database-url") -> None:
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except ProgrammingError:
        raise ConfigError(f"{name}: {_redact(url)!r} is not a PostgreSQL database URL; "
                          "expected postgresql://user:password@host:port/dbname") from None


@app.command()
def demo(
    plant: PlantOpt = None,
    connectors: ConnOpt = None,
    port: Annotated[int | None, typer.Option(help="API port \\[default: $OEE_API_PORT, else 8000]")] = None,
) -> None:
    """Run everything: embedded PostgreSQL and MQTT broker (unless URLs are set), the simulated plant,
    connectors, engine and API on http://127.0.0.1:8000."""
    from oee_stream.runtime import serve_until_stopped
    from oee_stream.service import log_config_warnings

    try:
        s = _settings(plant, connectors, api_port=port)
        log_config_warnings(s.plant, s.connectors)
        with _database_errors(s.database_url):
            asyncio.run(serve_until_stopped(s, embedded=True, simulate=True))
    except (ConfigError, ConnectionError) as exc:
        _fail(exc)


@app.command()
def run(
    plant: PlantOpt = None,
    connectors: ConnOpt = None,
    simulate: Annotated[bool, typer.Option(help="also run the simulated plant")] = False,
) -> None:
    """Run connectors, engine and API against real servers (OEE_DATABASE_URL, OEE_MQTT_URL)."""
    from oee_stream.runtime import serve_until_stopped
    from oee_stream.service import log_config_warnings

    try:
        s = _settings(plant, connectors)
        log_config_warnings(s.plant, s.connectors)
        with _database_errors(s.database_url):
            asyncio.run(serve_until_stopped(s, embedded=False, simulate=simulate))
    except (ConfigError, ConnectionError) as exc:
        _fail(exc)


@app.command()
def connectors(plant: PlantOpt = None, connectors: ConnOpt = None) -> None:
    """Run only the connectors (an edge box next to the PLCs), publishing to OEE_MQTT_URL."""
    from oee_stream.connectors.spool import SpoolError
    from oee_stream.edge import run_connectors
    from oee_stream.service import log_config_warnings

    try:
        s = _settings(plant, connectors)
        log_config_warnings(s.plant, s.connectors)
        asyncio.run(run_connectors(s))
    except (ConfigError, SpoolError) as exc:
        _fail(exc)


@app.command("check-config")
def check_config(plant: PlantOpt = None, connectors: ConnOpt = None) -> None:
    """Validate the plant model and every connector file without connecting to anything."""
    from pydantic import ValidationError

    from oee_stream.connectors.config import check_config_files

    try:
        s = Settings(**{k: v for k, v in {"plant": plant, "connectors": connectors}.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        _fail(ConfigError(*_settings_problems(exc)))
    # The defaults are relative to the working directory; outside a checkout "deploy/demo/plant.yaml:
    # file not found" would blame a file the user never named.
    if "plant" not in s.model_fields_set and not s.plant.exists():
        _fail(ConfigError(f"no plant model given: pass --config or set OEE_PLANT (the default {s.plant} "
                          "does not exist here)"))
    conn_paths = s.connectors if "connectors" in s.model_fields_set or s.connectors.exists() else None
    report = check_config_files(s.plant, conn_paths)
    if conn_paths is None:
        report.warnings.append(f"no connector folder given (--connectors or OEE_CONNECTORS) and the default "
                               f"{s.connectors} does not exist here: only the plant model was checked")

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    for line in report.errors:
        typer.echo(f"error: {line}", err=True)
    for line in report.warnings:
        typer.echo(f"warning: {line}", err=True)
    if report.errors:
        typer.echo(f"{plural(len(report.errors), 'error')}, {plural(len(report.warnings), 'warning')}", err=True)
        raise typer.Exit(2)
    p = report.plant
    assert p is not None
    conns = f" and {plural(len(report.connectors), 'connector')} in {conn_paths}" if conn_paths is not None else ""
    typer.echo(f"ok: {s.plant} (site {p.site.id}, {plural(len(p.lines), 'line')}, "
               f"{plural(len(p.machines), 'machine')}, config hash {p.config_hash()}){conns}")
    for c in report.connectors:
        typer.echo(f"  {c.source}: {getattr(c, 'kind', '')} connector {c.id!r}, {plural(len(c.machines), 'machine')}, "
                   f"{plural(len(c.signal_refs()), 'signal')}")


@app.command()
def migrate(database_url: DbOpt) -> None:
    """Create or upgrade the database schema (also done on every start)."""
    from oee_stream.storage.migrations import migrate as do_migrate

    try:
        _check_database_url(database_url)
    except ConfigError as exc:
        _fail(exc)
    with _database_errors(database_url):
        rep = do_migrate(database_url)
    typer.echo(f"schema version {rep.current} ({rep.flavor}); applied: {rep.applied or 'nothing'}")


def _port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@app.command()
def simulate(
    plant: ToolPlantOpt = _DEFAULT_PLANT,
    scenario: Annotated[Path, typer.Option(help="simulated plant scenario YAML")] = Path("simulators/demo.yaml"),
    opcua_port: int = 4840,
    modbus_port: int = 5020,
    seed: int | None = None,
    ledger: Annotated[Path | None, typer.Option(help="write the ground-truth ledger here")] = None,
) -> None:
    """Run only the simulated plant (OPC UA and Modbus servers) until Ctrl-C."""
    from oee_stream.logs import configure
    from oee_stream.simulators.runner import main_simulate
    from oee_stream.simulators.scenario import load_scenario

    configure()
    try:
        sc = load_scenario(scenario, load_plant(plant))
    except ConfigError as exc:
        _fail(exc)
    # Checked here because the servers report a taken port as a logged traceback (asyncua) or a bare
    # RuntimeError (pymodbus) that does not say which port.
    protocols = {m.protocol for m in sc.machines.values()}
    for proto, option, port in (("opcua", "--opcua-port", opcua_port), ("modbus", "--modbus-port", modbus_port)):
        if proto in protocols and _port_in_use(port):
            _fail(f"{option}: port {port} is already in use; is another simulator running? "
                  f"Stop it, or choose a free port with {option}")
    try:
        main_simulate(scenario, plant, opcua_port, modbus_port, seed, ledger)
    except ConfigError as exc:
        _fail(exc)


@app.command()
def record(
    output: Annotated[Path, typer.Argument(help="JSON-lines file to append bus messages to")],
    plant: ToolPlantOpt = _DEFAULT_PLANT,
    mqtt_url: Annotated[str, typer.Option(envvar="OEE_MQTT_URL", show_envvar=True)] = "mqtt://127.0.0.1:1883",
    seconds: Annotated[float | None, typer.Option(min=0, help="stop after this long (default: at Ctrl-C)")] = None,
    connect_timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for the broker")] = 10.0,
) -> None:
    """Record the live bus (samples and connector status) for `oee-stream replay`."""
    from oee_stream.replay import RecordingError, record_bus

    try:
        _check_mqtt_url(mqtt_url, "--mqtt-url")
        p = load_plant(plant)
        n = asyncio.run(record_bus(p, mqtt_url, output, seconds, connect_timeout=connect_timeout))
    except (ConfigError, RecordingError) as exc:
        _fail(exc)
    typer.echo(f"recorded {n} messages to {output}")


def _replay_notes(log_file: Path, rep: Replay) -> Iterator[str]:
    """What the engine refused while replaying, as the live engine logged it: for stderr."""
    if rep.skipped_tail is not None:
        yield f"{log_file}:{rep.skipped_tail}: incomplete last line left out (the recorder stopped mid-write)"
    if rep.dead_letters:
        top = "; ".join(f"{reason[:100]} ({n})" for reason, n in rep.dead_letters.most_common(3))
        more = len(rep.dead_letters) - 3
        yield (f"{rep.dead_letters.total()} dead letter(s) from {rep.messages} messages, as the live engine had "
               f"them: {top}{f'; and {more} other reasons' if more > 0 else ''}")
    if rep.late_dropped:
        yield f"{rep.late_dropped} late sample(s) dropped (older than policies.allowed_lateness_s)"


@app.command()
def replay(
    log_file: Annotated[Path, typer.Argument(help="a recording made by `oee-stream record` or the engine")],
    plant: ToolPlantOpt = _DEFAULT_PLANT,
    at: Annotated[float | None, typer.Option(help="evaluate at this epoch time (default: end of the log)")] = None,
    window: Annotated[list[str] | None, typer.Option(
        help="only these windows (repeatable): 15m, 1h, 8h, 24h, hour, shift, day")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Recompute KPIs from a recorded bus log through the same engine code.

    Malformed telemetry inside the log is dead-lettered and counted, as the live engine did (reported on
    stderr); a line that is not a recording line at all is an error."""
    from oee_stream.replay import RecordingError, format_table, replay_log

    try:
        p = load_plant(plant)
        rep = replay_log(p, log_file, at=at)
    except (ConfigError, RecordingError) as exc:
        _fail(exc)
    results = rep.results
    if window:
        known = list(dict.fromkeys(r.window for r in results))
        unknown = [w for w in window if w not in known]
        if unknown:
            _fail(f"--window: {unknown[0]!r} is not a window; allowed: {', '.join(known)}")
        results = [r for r in results if r.window in window]
    for note in _replay_notes(log_file, rep):
        typer.echo(f"note: {note}", err=True)
    if as_json:
        json.dump([r.to_json() for r in results], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        typer.echo(format_table(results))


key_app = typer.Typer(help="API keys (the first admin key; later ones also through /api/v1/admin/keys).",
                      no_args_is_help=True)
app.add_typer(key_app, name="api-key")


# api.auth.ROLES, spelled out so that `--help` does not import the API (tests/test_cli.py keeps them equal)
ROLES = ("viewer", "operator", "admin")


def _role(value: str) -> str:
    if value not in ROLES:
        raise typer.BadParameter(f"unknown role {value!r}; allowed: {', '.join(ROLES)}")
    return value


@key_app.command("create")
def api_key_create(
    name: Annotated[str, typer.Option(help="who or what uses the key, e.g. 'MES' or 'it admin'")],
    role: Annotated[str, typer.Option(parser=_role, metavar=f"[{'|'.join(ROLES)}]",
                                      help="what the key may do (each role includes the ones before it)")],
    database_url: DbOpt,
) -> None:
    """Create an API key and print it once (only its salted hash is stored)."""
    from oee_stream.api.auth import create_api_key
    from oee_stream.logs import configure

    configure()  # logs to stderr: stdout carries only the key, for scripts

    try:
        _check_database_url(database_url)
        with _database_errors(database_url):
            plaintext = create_api_key(database_url, name, role)
    except (ConfigError, ValueError) as exc:
        _fail(exc)
    typer.echo(plaintext)
    typer.echo(f"created {role} key {name!r}: shown only this once, store it in your secret store", err=True)


@key_app.command("revoke")
def api_key_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id: the part between `oee_` and the next `_`")],
    database_url: DbOpt,
) -> None:
    """Revoke an API key; every API process refuses it within a second."""
    from oee_stream.api.auth import revoke_api_key
    from oee_stream.logs import configure

    configure()

    try:
        _check_database_url(database_url)
    except ConfigError as exc:
        _fail(exc)
    with _database_errors(database_url):
        revoked = revoke_api_key(database_url, key_id)
    if not revoked:
        _fail(f"no live API key with id {key_id!r} (already revoked, or a typo)")
    typer.echo(f"revoked key {key_id}")


opcua_app = typer.Typer(help="OPC UA tools.", no_args_is_help=True)
app.add_typer(opcua_app, name="opcua")


def _opcua_endpoint(endpoint: str) -> str:
    u = urlsplit(endpoint)
    try:
        port, bad_port = u.port, False
    except ValueError:
        port, bad_port = None, True
    if u.scheme != "opc.tcp" or not u.hostname or port is None:
        no_port = u.scheme == "opc.tcp" and bool(u.hostname) and not bad_port
        raise ConfigError(f"{endpoint!r} is not an OPC UA endpoint; expected opc.tcp://host:port"
                          + (" (servers usually listen on 4840)" if no_port else ""))
    return endpoint


@opcua_app.command("browse")
def opcua_browse(
    endpoint: Annotated[str, typer.Argument(help="the server, opc.tcp://host:port")],
    depth: Annotated[int, typer.Option(min=0, help="levels below Objects")] = 3,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for the server, per request")] = 5.0,
) -> None:
    """List the variables of an OPC UA server with their node ids, to map them in a connector file."""
    import logging
    import os
    import socket

    from asyncua import Client, ua  # type: ignore[attr-defined]
    from asyncua.ua.uaerrors import UaStatusCodeError

    from oee_stream.logs import configure

    configure()
    # Failures end in one error line below; asyncua's warnings (session timeout revised, ...) are noise here.
    logging.getLogger("asyncua").setLevel(logging.ERROR)

    class StdoutClosed(Exception):
        pass

    def out(line: str) -> None:
        try:
            typer.echo(line)
        except BrokenPipeError:
            raise StdoutClosed from None

    try:
        _opcua_endpoint(endpoint)
    except ConfigError as exc:
        _fail(exc)

    async def walk() -> None:
        client = Client(endpoint, timeout=timeout)
        # asyncua bounds each step of the connect by `timeout`; the whole handshake gets the same bound
        # once more so that a server that accepts the socket and then says nothing cannot hang us.
        await asyncio.wait_for(client.connect(), timeout * 2)
        try:
            async def rec(node, level: int) -> None:  # type: ignore[no-untyped-def]
                for child in await node.get_children():
                    name = (await child.read_browse_name()).Name
                    cls = await child.read_node_class()
                    out(f"{'  ' * level}{name}  [{cls.name}]  {child.nodeid.to_string()}")
                    if level < depth:
                        await rec(child, level + 1)
            await rec(client.nodes.objects, 0)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout)

    try:
        asyncio.run(walk())
    except StdoutClosed:
        # `| head` has what it wanted; without this Python reports the pipe again when it flushes at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except ConnectionRefusedError:
        _fail(f"{endpoint}: connection refused")
    except TimeoutError:
        _fail(f"{endpoint}: no answer within {timeout:g} s (a firewall, a wrong host, or not an OPC UA server?)")
    except socket.gaierror:
        _fail(f"{endpoint}: unknown host {urlsplit(endpoint).hostname!r}")
    except UaStatusCodeError as exc:
        name, doc = ua.status_codes.get_name_and_doc(exc.code)
        hint = " (browse connects anonymously and without security)" if name.startswith(
            ("BadIdentity", "BadUser", "BadSecurity", "BadCertificate")) else ""
        _fail(f"{endpoint}: the server answered {name}: {doc}{hint}")
    except (ConnectionError, OSError) as exc:  # reset, unreachable network, no route
        _fail(f"{endpoint}: {exc.strerror or exc}")


if __name__ == "__main__":
    app()
