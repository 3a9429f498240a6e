"""Wires the parts into one running service: `oee-stream demo` and `oee-stream run`.

Every part lives in a context manager or a task owned by one TaskGroup-like supervisor, so Ctrl-C (or
SIGTERM) stops them all and the exit stack then stops the embedded servers: nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import uvicorn

from oee_stream.api.app import ApiSettings, create_app, live_cache_for
from oee_stream.board import board_router
from oee_stream.config import ConfigError, Plant, load_plant
from oee_stream.connectors import build_connector, check_connectors, load_connectors
from oee_stream.connectors.metrics import register_connector_metrics
from oee_stream.embedded import embedded_mqtt_broker, embedded_postgres, free_port
from oee_stream.service import EngineService
from oee_stream.settings import Settings
from oee_stream.storage.migrations import migrate_async
from oee_stream.storage.retention import Retention, apply_timescaledb_retention, retention_loop
from oee_stream.storage.writer import StorageWriter

log = structlog.get_logger("oee")

STOP_TIMEOUT_S = 15.0  # for the components to end once cancelled


async def wait_stopped(tasks: list[asyncio.Task[None]], timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """Wait for cancelled component tasks to end, at most `timeout`; returns the names of those still running.

    A component that does not end is logged with where it waits (`component_did_not_stop`) instead of
    holding the process, and a systemd stop, forever.
    """
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in done:
        if not t.cancelled():
            t.exception()  # retrieved: its failure was logged by `supervise`
    for t in pending:
        log.error("component_did_not_stop", component=t.get_name(), timeout_s=timeout, waiting_at=waiting_at(t))
    return sorted(t.get_name() for t in pending)


def waiting_at(task: asyncio.Task[Any], limit: int = 20) -> str:
    """Where a suspended task waits, innermost frame first: `sleep:649 <- _poll_loop:226 <- run:102`.

    `Task.get_stack()` shows only the task's own coroutine; this follows the chain of awaited coroutines
    (and async generators) down to the innermost one.
    """
    frames: list[str] = []
    aw: Any = task.get_coro()
    while aw is not None and len(frames) < limit:
        frame = getattr(aw, "cr_frame", None) or getattr(aw, "ag_frame", None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        aw = getattr(aw, "cr_await", None) or getattr(aw, "ag_await", None)
    return " <- ".join(reversed(frames))


class _Server(uvicorn.Server):
    # The supervisor owns the signals; uvicorn must not install its own handlers.
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@dataclass
class Running:
    """What a running service exposes to its caller (tests, the demo banner)."""

    plant: Plant
    database_url: str
    mqtt_url: str
    api_url: str
    service: EngineService
    simulator: Any = None
    connectors: list[Any] = field(default_factory=list)


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"API port {host}:{port} is already in use ({exc.strerror}); is another oee-stream running? "
                "Stop it, or choose another port with --port or OEE_API_PORT") from exc


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings,
    *,
    embedded: bool,
    simulate: bool,
    connector_env: Mapping[str, str] | None = None,
    seed: int | None = None,
) -> AsyncIterator[Running]:
    """Start database, broker, simulator, connectors, engine and API; stop all of them on exit."""
    plant = load_plant(settings.plant)
    _check_port_free(settings.api_host, settings.api_port)
    async with contextlib.AsyncExitStack() as stack:
        db_url = settings.database_url
        if db_url is None:
            if not embedded:
                raise ConfigError("OEE_DATABASE_URL is not set (oee-stream run needs a real database)")
            log.info("starting_embedded_postgresql", data_dir=str(settings.data_dir / "pg"))
            db_url = stack.enter_context(embedded_postgres(settings.data_dir / "pg"))
        mqtt_url = settings.mqtt_url
        if mqtt_url is None:
            if not embedded:
                raise ConfigError("OEE_MQTT_URL is not set (oee-stream run needs a real MQTT broker)")
            mqtt_url = await stack.enter_async_context(embedded_mqtt_broker())
            log.info("embedded_mqtt_broker", url=mqtt_url)
        report = await migrate_async(db_url)
        log.info("database_ready", flavor=report.flavor, schema_version=report.current)
        retention = Retention.from_days(settings.retention_samples_days, settings.retention_history_days)
        if report.flavor == "timescaledb":
            await asyncio.to_thread(apply_timescaledb_retention, db_url, retention)
        env = dict(os.environ)
        env.update(connector_env or {})
        sim = None
        if simulate:
            from oee_stream.simulators.runner import run_plant_simulator

            host = "127.0.0.1"
            sim = await stack.enter_async_context(run_plant_simulator(
                settings.scenario, plant, opcua_port=free_port(), modbus_port=free_port(), seed=seed, host=host))
            if sim.opcua_endpoint:
                env["OEE_SIM_OPCUA_ENDPOINT"] = sim.opcua_endpoint
            if sim.modbus_address:
                env["OEE_SIM_MODBUS_CONTROLLER"] = f"tcp://{sim.modbus_address[0]}:{sim.modbus_address[1]}"
            log.info("simulator_started", opcua=sim.opcua_endpoint, modbus=sim.modbus_address)
        configs = load_connectors(settings.connectors, env=env)
        check_connectors(plant, configs)
        ms = settings.mqtt(mqtt_url)
        writer = await stack.enter_async_context(StorageWriter(db_url))
        await writer.record_config(plant)
        service = EngineService(plant, ms, writer, tick_s=settings.tick_s,
                                write_every_ticks=settings.write_every_ticks, record_to=settings.record_path,
                                warm=settings.warm_start, session=settings.mqtt_session)
        # The demo keeps its spool in memory; a plant installation spools to disk under the data dir, so
        # samples survive a broker outage and a connector restart.
        connectors = [build_connector(c, ms, default_buffer="memory" if embedded else "disk",
                                      state_dir=settings.data_dir) for c in configs]
        register_connector_metrics(connectors)
        # The demo is read-only to anyone on the machine; `oee-stream run` needs API keys unless the
        # operator of the service enables anonymous read (OEE_ANONYMOUS_READ=true).
        api_settings = ApiSettings(database_url=db_url, plant=plant,
                                   anonymous_read=settings.anonymous_read or (embedded and simulate))
        # The API serves current states and KPIs from memory; the writer feeds it every committed result.
        cache = live_cache_for(api_settings)
        writer.add_listener(cache.on_written)
        app = create_app(api_settings, cache=cache)
        app.include_router(board_router(plant))
        server = _Server(uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_level="warning",
                                        lifespan="on", access_log=False))
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        tasks: list[asyncio.Task[None]] = []

        async def supervise(name: str, coro: Awaitable[None]) -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except ConnectionError as exc:  # a server we need is not there: its message says which
                log.error("component_failed", component=name, error=str(exc))
                raise
            except Exception:
                log.exception("component_failed", component=name)
                raise

        tasks.append(asyncio.create_task(supervise("engine", service.run()), name="engine"))
        for c in connectors:
            tasks.append(asyncio.create_task(supervise(f"connector {c.id}", c.run()), name=f"connector-{c.id}"))
        if report.flavor == "postgresql":
            # No retention policies without TimescaleDB: the service prunes old rows itself.
            tasks.append(asyncio.create_task(
                supervise("retention", retention_loop(db_url, retention, every_s=settings.retention_interval_s)),
                name="retention"))
        tasks.append(asyncio.create_task(supervise("api", server.serve()), name="api"))
        try:
            # Connected, or the engine stopped trying (its error, e.g. no broker, is the one to report); then
            # ready, once it has read its memory back from the database (it logs its progress).
            for what, event, limit in (("connected to the broker", service.connected, 60.0),
                                       ("ready", service.ready, None)):
                waiter = asyncio.create_task(event.wait())
                await asyncio.wait({waiter, tasks[0]}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    waiter.cancel()
                    if tasks[0].done():
                        tasks[0].result()
                    raise RuntimeError(f"the engine was not {what} within {limit:g} s (see the log above)"
                                       if limit is not None else "the engine stopped before it was ready")
            deadline = asyncio.get_running_loop().time() + 30
            while not server.started:
                if any(t.done() for t in tasks) or asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError("the API server did not start (is the port in use?)")
                await asyncio.sleep(0.05)
            yield Running(plant, db_url, mqtt_url, api_url, service, sim, connectors)
        finally:
            server.should_exit = True
            api_task = tasks[-1]
            interrupted = False
            try:
                await asyncio.wait({api_task}, timeout=5)
            except asyncio.CancelledError:  # stopped again meanwhile: stop the rest first, then pass it on
                interrupted = True
            for t in tasks:
                t.cancel()
            await wait_stopped(tasks)
            if interrupted:
                raise asyncio.CancelledError()


async def serve_until_stopped(settings: Settings, *, embedded: bool, simulate: bool, banner: bool = True) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with running_service(settings, embedded=embedded, simulate=simulate) as run:
            if banner:
                if os.environ.get("DISPLAY") and embedded and simulate:
                    import webbrowser

                    webbrowser.open(f"{run.api_url}/board")
                names = ", ".join(m.id for m in run.plant.machines)
                print(f"\noee-stream is running: {names}\n"
                      f"  board    : {run.api_url}/board   (the andon board for a floor TV)\n"
                      f"  machines : {run.api_url}/api/v1/machines\n"
                      f"  API docs : {run.api_url}/docs\n"
                      f"  metrics  : {run.api_url}/metrics\n"
                      f"Press Ctrl-C to stop.\n", flush=True)
            waiters = [asyncio.create_task(stop.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            log.info("stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def data_path(settings: Settings) -> Path:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings.data_dir
