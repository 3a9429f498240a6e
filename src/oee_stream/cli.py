"""The `oee-stream` command line."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from oee_stream.config import ConfigError, load_plant

app = typer.Typer(help="oee-stream: real-time OEE for plants.", no_args_is_help=True, add_completion=False)

PlantOpt = Annotated[Path | None, typer.Option("--config", "--plant", help="plant model YAML (OEE_PLANT)")]
ConnOpt = Annotated[Path | None, typer.Option("--connectors", help="folder of connector YAML files")]


def _settings(plant: Path | None = None, connectors: Path | None = None, **extra: object):  # type: ignore[no-untyped-def]
    from oee_stream.logs import configure
    from oee_stream.settings import Settings

    overrides: dict[str, object] = {k: v for k, v in extra.items() if v is not None}
    if plant is not None:
        overrides["plant"] = plant
    if connectors is not None:
        overrides["connectors"] = connectors
    s = Settings(**overrides)  # type: ignore[arg-type]
    configure(s.log_format, s.log_level)
    return s


def _fail(exc: Exception) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@app.command()
def demo(
    plant: PlantOpt = None,
    connectors: ConnOpt = None,
    port: Annotated[int | None, typer.Option(help="API port (default 8000)")] = None,
) -> None:
    """Run everything: embedded PostgreSQL and MQTT broker (unless URLs are set), the simulated plant,
    connectors, engine and API on http://127.0.0.1:8000."""
    from oee_stream.runtime import serve_until_stopped

    try:
        s = _settings(plant, connectors, api_port=port)
        asyncio.run(serve_until_stopped(s, embedded=True, simulate=True))
    except ConfigError as exc:
        _fail(exc)


@app.command()
def run(
    plant: PlantOpt = None,
    connectors: ConnOpt = None,
    simulate: Annotated[bool, typer.Option(help="also run the simulated plant")] = False,
) -> None:
    """Run connectors, engine and API against real servers (OEE_DATABASE_URL, OEE_MQTT_URL)."""
    from oee_stream.runtime import serve_until_stopped

    try:
        s = _settings(plant, connectors)
        asyncio.run(serve_until_stopped(s, embedded=False, simulate=simulate))
    except ConfigError as exc:
        _fail(exc)


@app.command()
def connectors(plant: PlantOpt = None, connectors: ConnOpt = None) -> None:
    """Run only the connectors (an edge box next to the PLCs), publishing to OEE_MQTT_URL."""
    from oee_stream.edge import run_connectors

    try:
        s = _settings(plant, connectors)
        asyncio.run(run_connectors(s))
    except ConfigError as exc:
        _fail(exc)


@app.command("check-config")
def check_config(plant: PlantOpt = None, connectors: ConnOpt = None) -> None:
    """Validate the plant model and every connector file without connecting to anything."""
    from oee_stream.connectors import check_connectors, load_connectors
    from oee_stream.settings import Settings

    s = Settings(**{k: v for k, v in {"plant": plant, "connectors": connectors}.items() if v is not None})  # type: ignore[arg-type]
    try:
        p = load_plant(s.plant)
        configs = load_connectors(s.connectors)
        check_connectors(p, configs)
    except ConfigError as exc:
        _fail(exc)
    typer.echo(f"ok: {s.plant} ({len(p.machines)} machines, config hash {p.config_hash()}), "
               f"{len(configs)} connector(s) in {s.connectors}")


@app.command()
def migrate(database_url: Annotated[str, typer.Option(envvar="OEE_DATABASE_URL")]) -> None:
    """Create or upgrade the database schema (also done on every start)."""
    from oee_stream.storage.migrations import migrate as do_migrate

    rep = do_migrate(database_url)
    typer.echo(f"schema version {rep.current} ({rep.flavor}); applied: {rep.applied or 'nothing'}")


@app.command()
def simulate(
    plant: PlantOpt = None,
    scenario: Annotated[Path, typer.Option()] = Path("simulators/demo.yaml"),
    opcua_port: int = 4840,
    modbus_port: int = 5020,
    seed: int | None = None,
    ledger: Annotated[Path | None, typer.Option(help="write the ground-truth ledger here")] = None,
) -> None:
    """Run only the simulated plant (OPC UA and Modbus servers) until Ctrl-C."""
    from oee_stream.simulators.runner import main_simulate

    main_simulate(scenario, plant or Path("deploy/demo/plant.yaml"), opcua_port, modbus_port, seed, ledger)


@app.command()
def record(
    output: Annotated[Path, typer.Argument(help="JSON-lines file to append bus messages to")],
    plant: PlantOpt = None,
    mqtt_url: Annotated[str, typer.Option(envvar="OEE_MQTT_URL")] = "mqtt://127.0.0.1:1883",
    seconds: Annotated[float | None, typer.Option(help="stop after this long")] = None,
) -> None:
    """Record the live bus (samples and connector status) for `oee-stream replay`."""
    from oee_stream.replay import record_bus

    p = load_plant(plant or Path("deploy/demo/plant.yaml"))
    n = asyncio.run(record_bus(p, mqtt_url, output, seconds))
    typer.echo(f"recorded {n} messages to {output}")


@app.command()
def replay(
    log_file: Annotated[Path, typer.Argument(help="a recording made by `oee-stream record` or the engine")],
    plant: PlantOpt = None,
    at: Annotated[float | None, typer.Option(help="evaluate at this epoch time (default: end of the log)")] = None,
    window: Annotated[list[str] | None, typer.Option(help="only these windows (repeatable)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Recompute KPIs from a recorded bus log through the same engine code."""
    from oee_stream.replay import format_table, replay_file

    try:
        p = load_plant(plant or Path("deploy/demo/plant.yaml"))
    except ConfigError as exc:
        _fail(exc)
    results = replay_file(p, log_file, at=at)
    if window:
        results = [r for r in results if r.window in window]
    if as_json:
        json.dump([r.to_json() for r in results], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        typer.echo(format_table(results))


key_app = typer.Typer(help="API keys (the first admin key; later ones also through /api/v1/admin/keys).",
                      no_args_is_help=True)
app.add_typer(key_app, name="api-key")
DbOpt = Annotated[str, typer.Option("--database-url", envvar="OEE_DATABASE_URL",
                                    help="the service's database (OEE_DATABASE_URL)")]


@key_app.command("create")
def api_key_create(
    name: Annotated[str, typer.Option(help="who or what uses the key, e.g. 'MES' or 'it admin'")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin")],
    database_url: DbOpt,
) -> None:
    """Create an API key and print it once (only its salted hash is stored)."""
    from oee_stream.api.auth import create_api_key
    from oee_stream.logs import configure

    configure()  # logs to stderr: stdout carries only the key, for scripts

    try:
        plaintext = create_api_key(database_url, name, role)
    except ValueError as exc:
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

    if not revoke_api_key(database_url, key_id):
        _fail(ValueError(f"no live API key with id {key_id!r} (already revoked, or a typo)"))
    typer.echo(f"revoked key {key_id}")


opcua_app = typer.Typer(help="OPC UA tools.")
app.add_typer(opcua_app, name="opcua")


@opcua_app.command("browse")
def opcua_browse(
    endpoint: str,
    depth: Annotated[int, typer.Option(help="levels below Objects")] = 3,
) -> None:
    """List the variables of an OPC UA server with their node ids, to map them in a connector file."""
    from asyncua import Client  # type: ignore[attr-defined]

    async def walk() -> None:
        async with Client(endpoint, timeout=10) as client:
            async def rec(node, level: int) -> None:  # type: ignore[no-untyped-def]
                for child in await node.get_children():
                    name = (await child.read_browse_name()).Name
                    cls = await child.read_node_class()
                    typer.echo(f"{'  ' * level}{name}  [{cls.name}]  {child.nodeid.to_string()}")
                    if level < depth:
                        await rec(child, level + 1)
            await rec(client.nodes.objects, 0)

    asyncio.run(walk())


if __name__ == "__main__":
    app()
