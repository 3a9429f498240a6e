"""Store-and-forward from a connector to the MQTT bus.

Samples go into a bounded buffer (`SampleBuffer`); one task takes batches from it, groups them per
(machine, signal) into bus messages, publishes them with QoS 1 and removes a sample from the buffer only
after the broker acknowledged its message. While the broker is down the buffer fills; when it is full the
oldest (or, with `when_full: drop_newest`, the incoming) samples are dropped and counted.
`MemoryBuffer` lives in the process; `spool.DiskSpool` (SQLite) implements the same `SampleBuffer` protocol
and survives a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from oee_stream import bus
from oee_stream.bus import BusClient, Message, MqttSettings, Sample
from oee_stream.connectors.aio import check_cancelled, stop_task

log = logging.getLogger(__name__)

PUBLISH_TASK_STOP_S = 5.0  # for the publishing task to end once cancelled


@dataclass
class ConnectorStats:
    """Counters of one connector (monotonic unless noted); the lead exposes them as Prometheus metrics."""

    connector: str
    samples_received: int = 0  # samples produced by the source (PLC side)
    samples_published: int = 0  # samples acknowledged by the broker
    messages_published: int = 0
    bad_samples: int = 0  # samples with quality 'bad' produced (PLC unreachable, bad status, ...)
    source_errors: int = 0  # read / subscription / connection errors on the PLC side
    publish_errors: int = 0  # broker errors and ack timeouts (samples stay in the buffer)
    reconnects: int = 0  # successful reconnects to the PLC after a loss
    dropped: int = 0  # samples dropped because the buffer was full
    source_connected: bool = False  # gauge
    broker_connected: bool = False  # gauge
    buffered: int = 0  # gauge: samples waiting for an acknowledgement
    last_sample_time: float | None = None  # gauge: wall-clock time of the last sample produced
    last_error: str | None = None  # the last source error, worded for a person (not a metric)
    extra: dict[str, int] = field(default_factory=dict)  # connector-specific counters

    def as_dict(self) -> dict[str, Any]:
        return {
            "connector": self.connector,
            "samples_received": self.samples_received,
            "samples_published": self.samples_published,
            "messages_published": self.messages_published,
            "bad_samples": self.bad_samples,
            "source_errors": self.source_errors,
            "publish_errors": self.publish_errors,
            "reconnects": self.reconnects,
            "dropped": self.dropped,
            "source_connected": self.source_connected,
            "broker_connected": self.broker_connected,
            "buffered": self.buffered,
            "last_sample_time": self.last_sample_time,
            "last_error": self.last_error,
            **self.extra,
        }


class SampleBuffer(Protocol):
    """What the publisher needs from a buffer; a disk-backed spool implements the same methods."""

    def put(self, samples: Iterable[Sample]) -> int:
        """Append samples; return how many old samples had to be dropped to make room."""
        ...

    def peek(self, limit: int) -> list[tuple[int, Sample]]:
        """Up to `limit` of the oldest unacknowledged samples with their sequence numbers, oldest first."""
        ...

    def ack(self, seqs: Iterable[int]) -> None:
        """Forget these samples (acknowledged by the broker); unknown seqs are ignored."""
        ...

    def __len__(self) -> int: ...


class MemoryBuffer:
    """Bounded in-memory buffer keyed by sequence number; when full, the oldest sample is dropped
    (`when_full="drop_newest"`: the incoming one)."""

    def __init__(self, capacity: int, when_full: str = "drop_oldest") -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if when_full not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"when_full must be drop_oldest or drop_newest, not {when_full!r}")
        self.capacity = capacity
        self.when_full = when_full
        self._items: dict[int, Sample] = {}
        self._seq = itertools.count()

    def put(self, samples: Iterable[Sample]) -> int:
        dropped = 0
        for s in samples:
            if len(self._items) >= self.capacity:
                dropped += 1
                if self.when_full == "drop_newest":
                    continue
                del self._items[next(iter(self._items))]
            self._items[next(self._seq)] = s
        return dropped

    def peek(self, limit: int) -> list[tuple[int, Sample]]:
        return list(itertools.islice(self._items.items(), limit))

    def ack(self, seqs: Iterable[int]) -> None:
        for q in seqs:
            self._items.pop(q, None)

    def __len__(self) -> int:
        return len(self._items)


class Publisher:
    """Owns the connector's MQTT session: last will, retained online status, buffered sample publishing.

    Use as an async context manager; `submit` never blocks and never raises.
    """

    def __init__(
        self,
        connector_id: str,
        site: str,
        machines: Sequence[str],
        settings: MqttSettings,
        stats: ConnectorStats,
        *,
        buffer: SampleBuffer | None = None,
        buffer_size: int = 100_000,
        max_batch_samples: int = 1000,
        batching: str = "per_signal",
        linger_s: float = 0.05,
        ack_timeout_s: float = 10.0,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
    ) -> None:
        self.connector_id = connector_id
        self.site = site
        self.machines = tuple(machines)
        self.stats = stats
        self.buffer: SampleBuffer = buffer if buffer is not None else MemoryBuffer(buffer_size)
        self.max_batch_samples = max_batch_samples
        if batching not in ("per_signal", "per_machine"):
            raise ValueError(f"batching must be per_signal or per_machine, not {batching!r}")
        self.per_machine = batching == "per_machine"
        self.linger_s = linger_s
        self.ack_timeout_s = ack_timeout_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._status_topic = bus.status_topic(site, connector_id)
        online, offline = bus.status_messages(site, connector_id, self.machines)
        self._offline = offline
        if settings.client_id is None:
            from dataclasses import replace

            settings = replace(settings, client_id=f"oee-conn-{connector_id}"[:64])
        self.bus = BusClient(settings, on_connect_messages=[Message(self._status_topic, online, retain=True)])
        self.bus.set_will(self._status_topic, offline)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ producer side

    def submit(self, samples: Iterable[Sample]) -> None:
        samples = list(samples)
        if not samples:
            return
        self.stats.samples_received += len(samples)
        self.stats.bad_samples += sum(1 for s in samples if s.quality == "bad")
        self.stats.last_sample_time = time.time()
        dropped = self.buffer.put(samples)
        if dropped:
            self.stats.dropped += dropped
            log.warning("connector %s: buffer full (%s), dropped %d samples", self.connector_id,
                        getattr(self.buffer, "when_full", "drop_oldest"), dropped)
        self.stats.buffered = len(self.buffer)
        self._wakeup.set()

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Publisher:
        await self.bus.__aenter__()
        self._task = asyncio.create_task(self._publish_loop(), name=f"publish-{self.connector_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Every wait here is bounded, and a cancellation of the caller meanwhile is passed on, never
        # swallowed; the broker session (paho's network thread) is closed whatever happens.
        try:
            task, self._task = self._task, None
            if task is not None and not await stop_task(task, PUBLISH_TASK_STOP_S):
                log.error("connector %s: the publishing task did not end within %gs of its cancellation",
                          self.connector_id, PUBLISH_TASK_STOP_S)
            # A clean disconnect does not fire the last will: say offline ourselves.
            with contextlib.suppress(Exception):
                if self.bus.connected:
                    await self.bus.publish_and_wait(self._status_topic, self._offline, retain=True, timeout=2.0)
        finally:
            await self.bus.__aexit__(*exc)
            self.stats.broker_connected = False

    async def flush(self, timeout_s: float) -> bool:
        """Wait until the buffer is empty (everything acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while len(self.buffer):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # ------------------------------------------------------------------ publishing

    async def _publish_loop(self) -> None:
        delay = self.retry_initial_s
        while True:
            await check_cancelled()  # a cancellation swallowed below us must still end the loop
            if not len(self.buffer):
                self._wakeup.clear()
                await self._wakeup.wait()
                if self.linger_s:
                    await asyncio.sleep(self.linger_s)  # let a burst gather into one message per signal
            self.stats.broker_connected = self.bus.connected
            if not self.bus.connected:
                try:
                    await self.bus.wait_connected(timeout=self.retry_max_s)
                except TimeoutError:
                    continue
                self.stats.broker_connected = True
            ok = await self._publish_batch()
            self.stats.buffered = len(self.buffer)
            if ok:
                delay = self.retry_initial_s
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    async def _publish_batch(self) -> bool:
        batch = self.buffer.peek(self.max_batch_samples)
        groups: dict[tuple[str, str], list[tuple[int, Sample]]] = {}
        if self.per_machine:
            for seq, s in batch:
                groups.setdefault((s.machine, bus.BATCH), []).append((seq, s))
        else:
            for seq, s in batch:
                groups.setdefault((s.machine, s.signal), []).append((seq, s))
        keys = list(groups)
        results = await asyncio.gather(
            *(self._publish_group(k, groups[k]) for k in keys), return_exceptions=True
        )
        all_ok = True
        for key, res in zip(keys, results, strict=True):
            if isinstance(res, asyncio.CancelledError):
                raise res
            if isinstance(res, BaseException):
                all_ok = False
                self.stats.publish_errors += 1
                log.warning("connector %s: publishing %s/%s failed: %s", self.connector_id, *key, res)
                continue
            items = groups[key]
            self.buffer.ack(seq for seq, _ in items)
            self.stats.samples_published += len(items)
            self.stats.messages_published += 1
        self.stats.buffered = len(self.buffer)
        return all_ok

    async def _publish_group(self, key: tuple[str, str], items: list[tuple[int, Sample]]) -> None:
        machine, signal = key
        if signal == bus.BATCH:
            topic, payload = (bus.batch_topic(self.site, machine),
                              bus.encode_batch(self.connector_id, [s for _, s in items]))
        else:
            topic = bus.sample_topic(self.site, machine, signal)
            payload = bus.encode_samples(self.connector_id, [s for _, s in items])
        await self.bus.publish_and_wait(topic, payload, qos=1, timeout=self.ack_timeout_s)
