"""The connector interface, a small backoff helper, and the plugin registry (`build_connector`)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from oee_stream.bus import MqttSettings, Sample
from oee_stream.connectors.publisher import ConnectorStats, MemoryBuffer, Publisher, SampleBuffer

DEFAULT_STATE_DIR = Path("var")  # the service's data_dir default; spools go to <state dir>/spool/<connector id>

log = logging.getLogger(__name__)


@runtime_checkable
class Connector(Protocol):
    """What the service runs: one PLC (or one endpoint) feeding the bus.

    `run()` connects to the broker and the source and keeps going through any source or broker failure
    until it is cancelled; cancellation closes everything it opened.
    """

    id: str
    site: str
    machines: tuple[str, ...]
    stats: ConnectorStats

    async def run(self) -> None: ...


class Backoff:
    """Exponential backoff with jitter: initial, ×2 per failure, capped; `reset()` after a success."""

    def __init__(self, initial_s: float, max_s: float, jitter: float = 0.1) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self._next = initial_s

    def next_delay(self) -> float:
        d = self._next
        self._next = min(self._next * 2, self.max_s)
        return d * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self._next = self.initial_s


class BaseConnector(abc.ABC):
    """Common lifetime: a `Publisher` (broker session, status, buffer) around the source loop."""

    kind: str = ""

    def __init__(self, cfg: Any, bus_settings: MqttSettings) -> None:
        self.cfg = cfg
        self.id: str = cfg.id
        self.site: str = cfg.site
        self.machines: tuple[str, ...] = tuple(cfg.machines)
        self.bus_settings = bus_settings
        self.stats = ConnectorStats(cfg.id)
        self.publisher: Publisher | None = None

    def spool_dir(self) -> Path:
        """Where this connector's disk buffer lives (`publish.spool_dir`, else var/spool/<id>)."""
        p = self.cfg.publish
        return Path(p.spool_dir) if p.spool_dir else DEFAULT_STATE_DIR / "spool" / self.id

    def _make_buffer(self) -> SampleBuffer:
        p = self.cfg.publish
        if p.buffer == "disk":
            from oee_stream.connectors.spool import DiskSpool

            spool = DiskSpool(self.spool_dir(), p.max_samples, p.when_full, synchronous=p.spool_synchronous)
            if len(spool):
                log.info("connector %s: %d samples in the spool %s from before; sending them first",
                         self.id, len(spool), spool.directory)
            return spool
        return MemoryBuffer(p.max_samples, p.when_full)

    def _make_publisher(self, buffer: SampleBuffer | None = None) -> Publisher:
        p = self.cfg.publish
        return Publisher(
            self.id, self.site, self.machines, self.bus_settings, self.stats,
            buffer=buffer if buffer is not None else self._make_buffer(), max_batch_samples=p.max_batch_samples,
            batching=p.batching, linger_s=p.linger_ms / 1000.0, ack_timeout_s=p.ack_timeout_s,
        )

    async def run(self) -> None:
        buffer = self._make_buffer()
        self.stats.buffered = len(buffer)
        try:
            async with self._make_publisher(buffer) as pub:
                self.publisher = pub
                try:
                    await self.run_source(pub.submit)
                finally:
                    self.publisher = None
                    self.stats.source_connected = False
        finally:
            close = getattr(buffer, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()

    @abc.abstractmethod
    async def run_source(self, emit: Callable[[list[Sample]], None]) -> None:
        """Read the source forever, handing samples to `emit`; never return, survive source errors."""


# --------------------------------------------------------------------------------------------- registry

Factory = Callable[[Any, MqttSettings], Connector]
_FACTORIES: dict[str, Factory] = {}
F = TypeVar("F", bound=Factory)


def register_connector(kind: str) -> Callable[[F], F]:
    """Class/function decorator: `@register_connector("opcua")` makes `build_connector` know the kind."""

    def deco(factory: F) -> F:
        _FACTORIES[kind] = factory
        return factory

    return deco


def connector_kinds() -> list[str]:
    _load_builtin()
    return sorted(_FACTORIES)


def _load_builtin() -> None:
    # importing the modules registers them
    from oee_stream.connectors import modbus, opcua  # noqa: F401


def build_connector(
    cfg: Any,
    bus_settings: MqttSettings,
    *,
    default_buffer: Literal["memory", "disk"] = "memory",
    state_dir: Path | str | None = None,
) -> Connector:
    """Instantiate the connector for a validated config (dispatch on `cfg.kind`).

    `default_buffer` is used when the file does not set `publish.buffer` (`oee-stream run` passes "disk");
    a disk buffer without `publish.spool_dir` goes to `<state_dir>/spool/<connector id>` (default var/).
    """
    _load_builtin()
    kind = getattr(cfg, "kind", None)
    factory = _FACTORIES.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise ValueError(f"no connector registered for kind {kind!r}; known: {sorted(_FACTORIES)}")
    return factory(resolve_publish(cfg, default_buffer, state_dir), bus_settings)


def resolve_publish(cfg: Any, default_buffer: Literal["memory", "disk"] = "memory",
                    state_dir: Path | str | None = None) -> Any:
    """The config with `publish.buffer` and (for disk) `publish.spool_dir` filled in."""
    pub = getattr(cfg, "publish", None)
    if pub is None or not hasattr(pub, "buffer"):
        return cfg
    update: dict[str, Any] = {}
    buffer = pub.buffer or default_buffer
    if pub.buffer is None:
        update["buffer"] = buffer
    if buffer == "disk" and not pub.spool_dir:
        update["spool_dir"] = str(Path(state_dir if state_dir is not None else DEFAULT_STATE_DIR) / "spool" / cfg.id)
    if not update:
        return cfg
    return cfg.model_copy(update={"publish": pub.model_copy(update=update)})


async def sleep_or_cancel(delay: float) -> None:
    """`asyncio.sleep` with a name that reads as intent in backoff loops."""
    await asyncio.sleep(max(0.0, delay))
