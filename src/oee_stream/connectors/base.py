"""The connector interface, a small backoff helper, and the plugin registry (`build_connector`)."""

from __future__ import annotations

import abc
import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from oee_stream.bus import MqttSettings, Sample
from oee_stream.connectors.publisher import ConnectorStats, Publisher

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

    def _make_publisher(self) -> Publisher:
        p = self.cfg.publish
        return Publisher(
            self.id, self.site, self.machines, self.bus_settings, self.stats,
            buffer_size=p.buffer_size, max_batch_samples=p.max_batch_samples,
            linger_s=p.linger_ms / 1000.0, ack_timeout_s=p.ack_timeout_s,
        )

    async def run(self) -> None:
        async with self._make_publisher() as pub:
            self.publisher = pub
            try:
                await self.run_source(pub.submit)
            finally:
                self.publisher = None
                self.stats.source_connected = False

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


def build_connector(cfg: Any, bus_settings: MqttSettings) -> Connector:
    """Instantiate the connector for a validated config (dispatch on `cfg.kind`)."""
    _load_builtin()
    kind = getattr(cfg, "kind", None)
    factory = _FACTORIES.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise ValueError(f"no connector registered for kind {kind!r}; known: {sorted(_FACTORIES)}")
    return factory(cfg, bus_settings)


async def sleep_or_cancel(delay: float) -> None:
    """`asyncio.sleep` with a name that reads as intent in backoff loops."""
    await asyncio.sleep(max(0.0, delay))
