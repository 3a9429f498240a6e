"""`oee-stream connectors`: only the connectors, for an edge box in the cell network next to the PLCs.

The plant server runs `oee-stream run` (engine, API, and any connectors in its own connector folder); an edge
box runs this with its own connector files and publishes to the plant's broker over TLS. Samples are spooled
to disk under the data directory while the broker is away, and replayed when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence

import structlog

from oee_stream.config import ConfigError, load_plant
from oee_stream.connectors import Connector, SpoolError, build_connector, check_connectors, load_connectors
from oee_stream.settings import Settings

log = structlog.get_logger("oee")

# While the broker is away, how many samples wait is logged this often (and when they are all sent).
BUFFER_LOG_EVERY_S = 60.0
BUFFER_POLL_S = 1.0


async def run_connectors(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run every connector in `settings.connectors` until SIGINT/SIGTERM (or `stop` is set).

    Raises ConfigError before connecting to anything when the files are wrong, SpoolError naming the
    connector and the spool when a disk buffer cannot be opened, and re-raises the first other connector
    failure (systemd restarts the unit). The broker is not waited for: samples are spooled until it answers.
    """
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
    reporter = asyncio.create_task(_report_buffers(connectors))
    log.info("connectors_started", connectors=[c.id for c in connectors], broker=f"{ms.host}:{ms.port}")
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            exc = None if t is stopper or t.cancelled() else t.exception()
            if isinstance(exc, SpoolError):
                # The command's one error line says it all; a traceback would only bury it.
                raise SpoolError(_spool_problem(t.get_name().removeprefix("connector-"), exc, settings)) from None
            if exc is not None:
                log.error("connector_failed", task=t.get_name(), error=str(exc))
                raise exc
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for t in [*tasks, stopper, reporter]:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, stopper, reporter, return_exceptions=True)
        log.info("connectors_stopped")


def _spool_problem(connector: str, exc: SpoolError, settings: Settings) -> str:
    text = f"connector {connector!r}: {exc}"
    if isinstance(exc.__cause__, FileExistsError | NotADirectoryError):
        text += "; a file is in the way: point publish.spool_dir (or OEE_DATA_DIR) at a folder"
    if isinstance(exc.__cause__, BlockingIOError):  # the spool's lock is held
        text += f"; is another `oee-stream connectors` or `run` with OEE_DATA_DIR={settings.data_dir} running?"
    return text


async def _report_buffers(connectors: Sequence[Connector]) -> None:
    """Log how many samples wait for the broker: when a connector starts buffering, every
    BUFFER_LOG_EVERY_S while it does, and once they are all sent (the journal is where an edge box is read)."""
    next_log: dict[str, float] = {}  # connectors that are buffering
    while True:
        await asyncio.sleep(BUFFER_POLL_S)
        now = time.monotonic()
        for c in connectors:
            st = c.stats
            if c.id in next_log:
                if not st.buffered:
                    del next_log[c.id]
                    log.info("connector_buffer_sent", connector=c.id, broker_connected=st.broker_connected)
                elif now >= next_log[c.id]:
                    next_log[c.id] = now + BUFFER_LOG_EVERY_S
                    log.warning("connector_buffering", connector=c.id, samples=st.buffered,
                                broker_connected=st.broker_connected)
            elif st.buffered and not st.broker_connected:
                next_log[c.id] = now + BUFFER_LOG_EVERY_S
                log.warning("connector_buffering", connector=c.id, samples=st.buffered,
                            broker_connected=st.broker_connected)
