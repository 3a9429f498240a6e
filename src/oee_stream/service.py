"""The engine service: bus in, engine, results out to the bus and the database.

One asyncio task reads the bus in batches, hands samples to the pure engine, and on every tick advances
all windows, publishes each machine's current KPIs (retained) and writes the results to the database.
Only what changed is written: a result whose window is new or whose numbers differ from what was last
written for that window (late data re-emits the windows it changes), and a state interval that is new or
whose end, class or reason changed. Anything malformed goes to the dead-letter topic and table with its
reason; nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
import structlog
from psycopg_pool import PoolTimeout

from oee_stream import bus, metrics
from oee_stream.config import Plant
from oee_stream.engine import Engine, KpiResult
from oee_stream.engine.plant import BUILTIN_REASONS, SIGNAL_CODES
from oee_stream.engine.plant import QUALITY_CODES as ENGINE_QUALITY
from oee_stream.engine.result import iso
from oee_stream.storage import history
from oee_stream.storage.schema import QUALITY_NAMES
from oee_stream.storage.writer import StateInterval, StorageWriter

log = structlog.get_logger("oee.engine")

# Signals the engine reads: the bus's KPI signals and a PLC's own good-parts counter (see docs/engine.md).
ENGINE_SIGNALS = (*bus.KPI_SIGNALS, "good")

# Windows published on the bus for wallboards; every window goes to the database.
PUBLISHED_WINDOWS = ("15m", "1h", "shift")
REASONS_POLL_S = 5.0
# At start-up the engine waits this long for the broker, then stops with a clear error (once running,
# a lost broker is reconnected to for as long as it takes).
BROKER_CONNECT_TIMEOUT_S = 30.0
# A restarted engine reads its memory back from the database an hour of samples at a time.
WARM_CHUNK_S = 3600.0
WARM_READ_AHEAD = 2  # hours read at once, each on its own pooled connection (at most the pool's size)
WARM_PROGRESS_EVERY_S = 5.0
# Numeric signals come as arrays (history.read_numeric); product names may be text.
_WARM_NUMERIC = tuple(sig for sig in ENGINE_SIGNALS if sig != "product")
_WARM_CODES = np.array([SIGNAL_CODES[sig] for sig in _WARM_NUMERIC], np.int8)
_WARM_QUALITY = np.array([ENGINE_QUALITY[QUALITY_NAMES[c]] for c in sorted(QUALITY_NAMES)], np.int8)


@dataclass
class ServiceStats:
    messages: int = 0
    samples: int = 0
    dead_letters: int = 0
    late_dropped: int = 0
    ticks: int = 0
    results_written: int = 0
    results_unchanged: int = 0
    intervals_written: int = 0
    last_results: list[KpiResult] = field(default_factory=list)


ResultKey = tuple[str, str, str, float]  # entity kind, entity, window kind, start: the stored row's key
IntervalKey = tuple[str, float]  # machine, start


def result_key(r: KpiResult) -> ResultKey:
    return (r.entity_kind, r.entity, r.window, r.start)


def result_signature(r: KpiResult) -> tuple[Any, ...]:
    """Everything a stored result row holds (computed_at aside): equal signatures need no new write."""
    return tuple(getattr(r, f) if not isinstance(getattr(r, f), dict | list) else repr(getattr(r, f))
                 for f in r.__slots__)


class ChangeFilter:
    """What was last written per result window and per state interval, to write only what changed.

    Keys no longer emitted by the engine (windows past the lateness horizon, intervals that ended before
    it) are forgotten, so the memory is bounded by one tick's output.
    """

    def __init__(self) -> None:
        self.results: dict[ResultKey, tuple[Any, ...]] = {}
        self.intervals: dict[IntervalKey, tuple[Any, ...]] = {}

    def changed_results(self, results: list[KpiResult]) -> list[KpiResult]:
        out: list[KpiResult] = []
        seen: dict[ResultKey, tuple[Any, ...]] = {}
        for r in results:
            k = result_key(r)
            sig = result_signature(r)
            seen[k] = sig
            if self.results.get(k) != sig:
                out.append(r)
        self.results = seen
        return out

    def changed_intervals(self, intervals: list[StateInterval],
                          since: float) -> tuple[list[StateInterval], list[IntervalKey]]:
        """(intervals to write, (machine, start) of written ones to delete)."""
        out: list[StateInterval] = []
        current: set[IntervalKey] = set()
        for iv in intervals:
            k = (iv.machine, iv.start)
            current.add(k)
            sig = (iv.end, iv.time_class, iv.reason, iv.reason_source)
            if self.intervals.get(k) != sig:
                out.append(iv)
                self.intervals[k] = sig
        # An interval written before that starts after `since` and is no longer emitted was removed by a
        # re-derivation (its rows moved to other start times): it goes from the database too, or an open
        # one would stay open and grow for ever. (One that started earlier may just have ended before
        # `since` since the last write, so it is only forgotten.)
        kept = {k: v for k, v in self.intervals.items() if v[0] is None or v[0] > since}
        removed = [k for k in kept if k not in current and k[1] >= since]
        self.intervals = {k: v for k, v in kept.items() if k in current}
        return out, removed


# Reads the engine's samples of [start, end) for a warm start: (bus samples, numeric columns or None).
SpanReader = Callable[[Any, Sequence[str], float, float],
                      Awaitable[tuple[list[bus.Sample], history.NumericSamples | None]]]


async def read_span(conn: Any, machines: Sequence[str], start: float,
                    end: float) -> tuple[list[bus.Sample], history.NumericSamples | None]:
    """The engine's samples of [start, end): product names as rows, the numeric signals as columns."""
    texts = await history.read_text_samples(conn, machines, ("product",), start, end)
    return texts, await history.read_numeric(conn, machines, _WARM_NUMERIC, start, end)


@dataclass
class WarmStart:
    """What a restarted engine read back from the database."""

    start: float = math.nan  # the engine's memory begins here
    samples: int = 0
    events: int = 0
    seconds: float = 0.0


@dataclass
class Applied:
    accepted: int = 0
    store: list[bus.Sample] = field(default_factory=list)  # every valid sample, for the historian
    dead: list[tuple[str, bytes, str]] = field(default_factory=list)  # (topic, payload, reason)
    late: list[tuple[bus.Sample, float]] = field(default_factory=list)
    statuses: list[tuple[bus.ConnectorStatus, float]] = field(default_factory=list)  # with the time applied


def apply_messages(engine: Engine, batch: list[bus.Message], now: float) -> Applied:
    """Decode bus messages and feed the engine; pure apart from the engine's state.

    The live service and `oee-stream replay` both go through here, so a replay of a recording computes
    exactly what the live engine computed.
    """
    out = Applied()
    site_index = engine.cp.index
    samples: list[bus.Sample] = []
    for msg in batch:
        parts = msg.topic.split("/")
        if len(parts) == 5 and parts[3] == "_status":
            try:
                st = bus.decode_status(msg.payload)
            except bus.PayloadError as exc:
                out.dead.append((msg.topic, msg.payload, str(exc)))
                continue
            # A last will carries the time the connector connected; the engine needs when it died.
            ts = now if st.state == "offline" else min(st.ts, now)
            engine.connector_status(st.machines, st.state, ts, st.session)
            out.statuses.append((st, ts))
            continue
        try:
            _conn, decoded = bus.decode_samples(msg.topic, msg.payload)
        except bus.PayloadError as exc:
            out.dead.append((msg.topic, msg.payload, str(exc)))
            continue
        samples.extend(decoded)
    known: list[bus.Sample] = []
    for s in samples:
        if s.machine in site_index:
            known.append(s)
        else:
            out.dead.append((f"{s.machine}/{s.signal}", orjson.dumps({"ts": s.ts, "value": s.value}),
                             f"unknown machine {s.machine!r}: not in the plant model"))
    kpi = [s for s in known if s.signal in ENGINE_SIGNALS]
    refused: set[int] = set()
    if kpi:
        rep = engine.ingest(kpi, now=now)
        out.accepted = rep.accepted
        for i, reason in rep.rejected:
            s = kpi[i]
            refused.add(id(s))
            out.dead.append((f"{s.machine}/{s.signal}", orjson.dumps({"ts": s.ts, "value": s.value, "q": s.quality}),
                             reason))
        out.late = [(kpi[i], lag) for i, lag in rep.late]
        # The historian holds what the engine folded in, so that a restarted engine rebuilt from it
        # computes what this one did: samples dropped as late go to the dead letters instead.
        refused.update(id(kpi[i]) for i, _lag in rep.late)
    out.store = [s for s in known if id(s) not in refused]
    return out


class EngineService:
    def __init__(
        self,
        plant: Plant,
        mqtt: bus.MqttSettings,
        writer: StorageWriter | None,
        *,
        tick_s: float = 1.0,
        write_every_ticks: int = 1,
        clock: Callable[[], float] = time.time,
        record_to: Path | None = None,
        warm: bool = True,
        session: str | None = None,
    ) -> None:
        self.plant = plant
        self.site = plant.site.id
        self.engine = Engine(plant)
        self.mqtt = mqtt
        self.writer = writer
        self.tick_s = tick_s
        self.write_every_ticks = write_every_ticks
        self.clock = clock
        self.stats = ServiceStats()
        self.ready = asyncio.Event()
        self.connected = asyncio.Event()  # to the broker; `ready` follows once the engine is warm
        self._record_to = record_to
        self.warm = warm  # read the engine's memory back from the database at start
        self.session = session  # the broker keeps what arrives for the engine while it is away
        self._record_file: Any = None
        self._bus: bus.BusClient | None = None
        self._dups_seen = 0  # engine duplicates already counted in the Prometheus counter
        self._rederived_seen = 0  # engine re-derivations already counted
        self.changes = ChangeFilter()
        self._reasons_next_poll = 0.0
        self._reasons_seen: list[tuple[str, float, float | None, str]] | None = None

    async def run(self) -> None:
        subs = [f"{bus.PREFIX}/{self.site}/+/+"]
        client = bus.BusClient(self.mqtt, subscriptions=subs, queue_size=50_000, session=self.session)
        if self._record_to is not None:
            self._record_to.parent.mkdir(parents=True, exist_ok=True)
            self._record_file = self._record_to.open("ab")
        metrics.ENGINE_READY.set(0)
        try:
            async with client:
                self._bus = client
                try:
                    await client.wait_connected(timeout=BROKER_CONNECT_TIMEOUT_S)
                except TimeoutError:
                    raise ConnectionError(
                        f"the MQTT broker {self.mqtt.host}:{self.mqtt.port} did not answer within "
                        f"{BROKER_CONNECT_TIMEOUT_S:g} s; check OEE_MQTT_URL and that the broker runs") from None
                log.info("engine_connected", broker=self.mqtt.host, port=self.mqtt.port, site=self.site)
                self.connected.set()
                # What arrives while the engine reads its memory back waits here, in arrival order, so that
                # the bus client's queue never fills up.
                backlog: list[bus.Message] = []
                if self.writer is not None and self.warm:
                    await self._warm_start_retrying(lambda: backlog.extend(client.drain(1 << 30)))
                backlog.extend(client.drain(1 << 30))
                for i in range(0, len(backlog), 20_000):
                    await self.handle_messages(backlog[i:i + 20_000])
                backlog.clear()
                self.ready.set()
                metrics.ENGINE_READY.set(1)
                next_tick = self.clock()
                while True:
                    timeout = max(0.0, next_tick - self.clock())
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
                    # comes as a message arrives (gh-86296), and this loop would then never end.
                    try:
                        async with asyncio.timeout(timeout):
                            first = await client.get()
                        batch = [first, *client.drain(20_000)]
                    except TimeoutError:
                        batch = []
                    if batch:
                        await self.handle_messages(batch)
                    if self.clock() >= next_tick:
                        await self.tick()
                        next_tick = self.clock() + self.tick_s
        finally:
            metrics.ENGINE_READY.set(0)
            self._bus = None
            if self._record_file is not None:
                self._record_file.close()

    async def _warm_start_retrying(self, drain: Callable[[], None]) -> None:
        """The warm start, again from an empty engine until the database answers: starting without the
        memory would write a restarted shift over the stored one. The bus is drained while it waits."""
        delay = 1.0
        while True:
            try:
                await self.warm_start(on_chunk=drain)
                return
            except (psycopg.Error, PoolTimeout, OSError) as exc:
                log.warning("engine_warm_start_failed", retry_in_s=delay,
                            error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
            self.engine = Engine(self.plant)
            for _ in range(int(delay / 0.1)):
                drain()
                await asyncio.sleep(0.1)
            delay = min(delay * 2, 15.0)

    async def warm_start(self, now: float | None = None, *, on_chunk: Callable[[], None] | None = None,
                         read: SpanReader = read_span) -> WarmStart:
        """Read the engine's memory back from the database after a restart.

        The samples table holds every sample the engine folded in and `connector_events` every connector
        event it applied; reading back as far as any window reaches (the longest rolling window or a day,
        plus allowed_lateness_s), the windows of the last day (a shift, a day, the rolling windows) go on from
        where the last run left them instead of starting empty. Each series' newest sample before the
        engine's memory begins holds at its start; connector events come back with their sessions, so a
        connector outage stays unknown time. Samples are fed an hour at a time in time order (none is late
        against the one before), and `on_chunk` runs after each hour (the service drains the bus there);
        `read` reads an hour (benchmarks/warm_start.py times it, and puts a naive reader in its place).
        The engine knows nothing after the newest row it read: every connector online then is taken as
        offline from that moment, until its retained status comes over the bus (read right after this). The
        same session (a connector on an edge box that kept running; the broker kept its messages) lifts it;
        a new session (connectors restarted with the service) leaves the service's downtime unknown.

        Figures agree with the run that wrote the rows to the database's microsecond; one difference is
        known: a series' very first sample that reached the live engine more than allowed_lateness_s behind
        its machine's other signals held from its arrival there, and holds from its own time here.
        """
        assert self.writer is not None
        eng = self.engine
        now = self.clock() if now is None else now
        start = math.floor((now - min(eng.reach_s, eng.retention_s)) / 3600.0) * 3600.0
        if eng.origin is None:
            eng.origin = start
        machines = list(eng.cp.machine_ids)
        out = WarmStart(start=start)
        t0 = last_log = time.monotonic()
        online: dict[str, history.ConnectorEvent] = {}  # connector -> its newest event, while online
        newest = -math.inf

        def apply(ev: history.ConnectorEvent) -> None:
            nonlocal newest
            eng.connector_status(ev.machines, ev.state, ev.ts, ev.session)
            out.events += 1
            newest = max(newest, ev.ts)
            if ev.state == "online":
                online[ev.connector] = ev
            else:
                online.pop(ev.connector, None)

        log.info("engine_warm_start", since=iso(start), hours=round((now - start) / 3600.0, 1))
        metrics.WARM_START_PROGRESS.set(0.0)
        pool, timeout = self.writer.pool, self.writer.acquire_timeout_s
        async with pool.connection(timeout=timeout) as conn:
            for ev in await history.read_event_anchors(conn, start):
                apply(ev)
            anchors = await history.read_anchors(conn, machines, ENGINE_SIGNALS, start)
        n, _newest = self._warm_feed(anchors, None, now)  # all older than the start: not the newest
        out.samples += n
        # (a, b, hi): the hour [a, b) the engine advances to, read up to hi. The last hour reaches past now: a
        # sample newer than the clock (skew) is the engine's to judge.
        spans: list[tuple[float, float, float]] = []
        a = start
        while a < now:
            b = a + WARM_CHUNK_S if a + WARM_CHUNK_S < now else math.inf
            spans.append((a, b, min(b, now + eng.policies.max_clock_skew_s + WARM_CHUNK_S)))
            a = b

        async def fetch(a: float, hi: float) -> tuple[list[history.ConnectorEvent],
                                                      tuple[list[bus.Sample], history.NumericSamples | None]]:
            async with pool.connection(timeout=timeout) as c:
                return await history.read_connector_events(c, a, hi), await read(c, machines, a, hi)

        # The next hours are read on other connections while the engine takes this one: the database does
        # most of the reading, and does it on as many cores as it has connections.
        ahead = max(1, min(WARM_READ_AHEAD, pool.max_size))
        reads = deque(asyncio.create_task(fetch(a, hi)) for a, _b, hi in spans[:ahead])
        try:
            for k, (_a, b, _hi) in enumerate(spans):
                events, data = await reads.popleft()  # and no longer held: an hour's rows are freed once fed
                if k + ahead < len(spans):
                    reads.append(asyncio.create_task(fetch(spans[k + ahead][0], spans[k + ahead][2])))
                for ev in events:
                    apply(ev)
                n, t_max = self._warm_feed(*data, now)
                out.samples += n
                newest = max(newest, t_max)
                eng.advance(min(b, now))
                done = (min(b, now) - start) / max(now - start, 1e-9)
                metrics.WARM_START_PROGRESS.set(done)
                if on_chunk is not None:
                    on_chunk()
                if time.monotonic() - last_log >= WARM_PROGRESS_EVERY_S:
                    last_log = time.monotonic()
                    log.info("engine_warm_start_progress", until=iso(min(b, now)), percent=round(100.0 * done, 1),
                             samples=out.samples)
        finally:
            for task in reads:
                task.cancel()
            # Each read ends at its next await; a failed read's error is the one raised here, the rest are
            # only collected.
            await asyncio.gather(*reads, return_exceptions=True)
        if math.isfinite(newest):
            for ev in online.values():
                eng.connector_status(ev.machines, "offline", newest, ev.session)
        out.seconds = time.monotonic() - t0
        metrics.WARM_START_PROGRESS.set(1.0)
        metrics.WARM_START_SECONDS.set(out.seconds)
        log.info("engine_warm_started", samples=out.samples, connector_events=out.events,
                 seconds=round(out.seconds, 3))
        return out

    def _warm_feed(self, texts: list[bus.Sample], numeric: history.NumericSamples | None,
                   now: float) -> tuple[int, float]:
        """Ingest one span's samples in one call (lateness is judged against what came before the call);
        (samples accepted, the newest sample's time or -inf)."""
        eng = self.engine
        m, s, t, v, q, _refused = eng.sample_arrays(texts)
        if numeric is not None and len(numeric):
            m = np.concatenate([m, numeric.machine.astype(np.int64)])
            s = np.concatenate([s, _WARM_CODES[numeric.signal]])
            t = np.concatenate([t, numeric.t])
            v = np.concatenate([v, numeric.value])
            q = np.concatenate([q, _WARM_QUALITY[numeric.quality]])
        if not len(t):
            return 0, -math.inf
        return eng.ingest_arrays(m, s, t, v, q, now=now).accepted, float(t.max())

    async def handle_messages(self, batch: list[bus.Message]) -> None:
        now = self.clock()
        self.stats.messages += len(batch)
        if self._record_file is not None:
            for msg in batch:
                self._record_file.write(orjson.dumps(
                    {"t": now, "topic": msg.topic, "payload": msg.payload.decode("utf-8", "replace")}) + b"\n")
        out = apply_messages(self.engine, batch, now)
        self.stats.samples += out.accepted
        metrics.SAMPLES_INGESTED.inc(out.accepted)
        self.stats.late_dropped += len(out.late)
        metrics.SAMPLES_LATE_DROPPED.inc(len(out.late))
        lateness = self.plant.policies.allowed_lateness_s
        for s, lag in out.late:
            log.warning("late_sample_dropped", machine=s.machine, signal=s.signal, lag_s=round(lag, 3))
            if self.writer is not None:
                await self.writer.write_dead_letter(
                    reason=f"late: {lag:.3f} s behind the machine's newest sample (allowed_lateness_s {lateness:g})",
                    topic=bus.sample_topic(self.site, s.machine, s.signal),
                    payload=orjson.dumps({"ts": s.ts, "value": s.value, "q": s.quality}), received_at=now)
        for st, _ts in out.statuses:
            log.info("connector_status", connector=st.connector, state=st.state, machines=list(st.machines))
        for topic, payload, reason in out.dead:
            await self.dead_letter(topic, payload, reason)
        if self.writer is not None and out.statuses:
            await self.writer.write_connector_events(
                (m, ts, st.connector, st.state, st.session) for st, ts in out.statuses for m in st.machines)
        if self.writer is not None and out.store:
            await self.writer.write_samples(out.store)

    async def dead_letter(self, topic: str, payload: bytes, reason: str) -> None:
        self.stats.dead_letters += 1
        metrics.DEAD_LETTERS.labels(reason=reason.split(" ")[0] if reason else "unknown").inc()
        log.warning("dead_letter", topic=topic, reason=reason)
        body = orjson.dumps({"v": bus.BUS_VERSION, "topic": topic, "reason": reason,
                             "payload": payload[:4096].decode("utf-8", "replace"), "ts": self.clock()})
        if self._bus is not None:
            self._bus.publish_nowait(bus.deadletter_topic(self.site), body, qos=1)
        if self.writer is not None:
            await self.writer.write_dead_letter(reason=reason, topic=topic, payload=payload[:4096])

    async def refresh_operator_reasons(self, now: float) -> None:
        """Hand the engine the reasons operators gave downtime events (stored by the API), so the stop
        seconds of those events count under the operator's reason in `downtime_by_reason_s`. Polled every
        REASONS_POLL_S: edits are rare and a few seconds' delay is invisible on a board; a database outage
        keeps the last known reasons."""
        if self.writer is None or now < self._reasons_next_poll:
            return
        self._reasons_next_poll = now + REASONS_POLL_S
        try:
            rows = await self.writer.operator_reasons(now - self.engine.retention_s)
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            log.warning("operator_reasons_unavailable", error=str(exc))
            return
        if rows == self._reasons_seen and all(r[2] is not None for r in rows):
            return
        self._reasons_seen = rows
        # An event still open is coded up to now; the next poll extends it (its end is stored when it ends).
        self.engine.set_reason_overrides([r[0] for r in rows], [r[1] for r in rows],
                                         [now if r[2] is None else r[2] for r in rows], [r[3] for r in rows])

    async def tick(self) -> list[KpiResult]:
        now = self.clock()
        await self.refresh_operator_reasons(now)
        with metrics.TICK_SECONDS.time():
            results = self.engine.results(now)
        self.stats.ticks += 1
        self.stats.last_results = results
        st = self.engine.stats
        metrics.SAMPLES_DUPLICATE.inc(max(0, st.duplicates - self._dups_seen))
        self._dups_seen = st.duplicates
        metrics.REDERIVED_MACHINES.inc(max(0, st.rederived_machines - self._rederived_seen))
        self._rederived_seen = st.rederived_machines
        for m, c in st.counter_resets.items():
            metrics.COUNTER_RESETS.labels(machine=m).set(c)
        for m, c in st.counter_rollovers.items():
            metrics.COUNTER_ROLLOVERS.labels(machine=m).set(c)
        for i, m in enumerate(self.engine.cp.machine_ids):
            wm = float(self.engine.watermark[i])
            if wm > 0:
                metrics.INGEST_LAG.labels(machine=m).set(now - wm)
        if self._bus is not None:
            seen: set[tuple[str, str]] = set()
            for r in reversed(results):
                key = (f"{r.entity_kind}:{r.entity}", r.window)
                if r.window in PUBLISHED_WINDOWS and key not in seen:
                    seen.add(key)
                    self._bus.publish_nowait(bus.result_topic(self.site, r.entity, r.window, r.entity_kind),
                                             orjson.dumps(r.to_json()), qos=1, retain=True)
                    metrics.RESULTS_PUBLISHED.inc()
        if self.writer is not None and self.stats.ticks % self.write_every_ticks == 0:
            changed = self.changes.changed_results(results)
            self.stats.results_written += len(changed)
            self.stats.results_unchanged += len(results) - len(changed)
            if changed:
                await self.writer.write_results(changed)
            since = now - self.plant.policies.allowed_lateness_s - 10 * self.tick_s
            intervals, removed = self.changes.changed_intervals([
                StateInterval(m, a, b, cls, reason,
                              None if not reason else ("rule" if reason in BUILTIN_REASONS else "plc"))
                for m, a, b, cls, reason in self.engine.state_intervals(now, since)
                if cls != "unscheduled"
            ], since)
            self.stats.intervals_written += len(intervals)
            if removed:
                await self.writer.delete_state_intervals(removed)
            if intervals:
                await self.writer.write_state_intervals(intervals)
            metrics.DB_WRITE_RETRIES.set(self.writer.retries)
            metrics.DB_DROPPED_ROWS.set(self.writer.dropped_rows)
            metrics.DB_BUFFERED_ROWS.set(self.writer.buffered_rows)
        return results


def log_config_warnings(plant_path: Path | str, connector_paths: Path | str | Sequence[Path | str]) -> list[str]:
    """Log the warnings `oee-stream check-config` prints for these files, one `config_warning` event each.

    `run` and `demo` call it once at start-up, so that an integrator finds them in the journal without
    running check-config. The errors are not logged here: the start-up itself refuses them.
    """
    from oee_stream.connectors.config import check_config_files

    warnings = check_config_files(plant_path, connector_paths).warnings
    for text in warnings:
        log.warning("config_warning", warning=text)
    return warnings

