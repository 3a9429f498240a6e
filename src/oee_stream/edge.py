"""`oee-stream connectors`: only the connectors, for an edge box in the cell network next to the PLCs.

The plant server runs `oee-stream run` (engine, API, and any connectors in its own connector folder); an edge
box runs this with its own connector files and publishes to the plant's broker over TLS. Samples are spooled
to disk under the data directory while the broker is away, and replayed when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from oee_stream.config import ConfigError, load_plant
from oee_stream.connectors import build_connector, check_connectors, load_connectors
from oee_stream.settings import Settings

log = structlog.get_logger("oee")


async def run_connectors(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run every connector in `settings.connectors` until SIGINT/SIGTERM (or `stop` is set).

    Raises ConfigError before connecting to anything when the files are wrong, and re-raises the first
    connector failure (systemd restarts the unit)."""
    if settings.mqtt_url is None:
        raise ConfigError("OEE_MQTT_URL is not set (the connectors publish to the plant's MQTT broker)")
    plant = load_plant(settings.plant)
    configs = load_connectors(settings.connectors)
    if not configs:
        raise ConfigError(f"no connector files (*.yaml) in {settings.connectors}")
    check_connectors(plant, configs)
    ms = settings.mqtt(settings.mqtt_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    connectors = [build_connector(c, ms, default_buffer="disk", state_dir=settings.data_dir) for c in configs]
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(c.run(), name=f"connector-{c.id}") for c in connectors]
    stopper = asyncio.create_task(stop.wait())
    log.info("connectors_started", connectors=[c.id for c in connectors], broker=ms.host)
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper and not t.cancelled() and t.exception() is not None:
                log.error("connector_failed", task=t.get_name(), error=str(t.exception()))
                raise t.exception()  # type: ignore[misc]
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for t in [*tasks, stopper]:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
        log.info("connectors_stopped")
