"""A restarted engine reads its memory back from the database and computes what the engine that wrote it did.

One engine service is fed a day and a half of two machines over the bus path (`handle_messages`): state
changes, counts, product changes, a sample within the allowed lateness and one beyond it, a connector that
restarts (a lost gap) and one that reconnects with its spool (no gap), and a state set long before the
engine's memory begins. A second service on the same database starts empty, warms up from the database
and must give every window of every machine and roll-up the same numbers; a third without the warm start
must not (the restart problem this solves).
"""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from oee_stream import bus
from oee_stream.bus import ConnectorStatus, Message, Sample
from oee_stream.engine import KpiResult
from oee_stream.service import EngineService, read_span
from oee_stream.storage.writer import StorageWriter
from tests.engine_fixtures import plant as make_plant

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC).timestamp()
SITE = "site"
FIELDS = ("availability", "performance", "quality", "oee", "teep", "utilization", "coverage", "total", "good",
          "reject", "ppt_s", "run_time_s", "stops", "mtbf_s", "mttr_s")


def _plant() -> Any:
    products = {"a": {"ideal_cycle_time_s": 1.0}, "b": {"ideal_cycle_time_s": 2.5}}
    return make_plant(
        machines=[{"id": "m1", "state_table": "t", "products": products},
                  {"id": "m2", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 0.8}}}],
        shifts=[{"name": "early", "start": "06:00", "end": "14:00",
                 "breaks": [{"start": "10:00", "end": "10:30"}]},
                {"name": "late", "start": "14:00", "end": "22:00"}],
        policies={"allowed_lateness_s": 300},
    )


def _ms(x: float) -> float:
    # Times on a millisecond grid survive timestamptz (microseconds) exactly.
    return round(x, 3)


def _status(ts: float, connector: str, state: str, machines: tuple[str, ...], session: str) -> Message:
    st = ConnectorStatus(connector, state, _ms(ts), machines, session)  # type: ignore[arg-type]
    return Message(bus.status_topic(SITE, connector), bus.encode_status(st), True)


def _traffic(seed: int) -> list[tuple[float, Message]]:
    """(arrival time, bus message) in arrival order."""
    rng = random.Random(seed)
    out: list[tuple[float, Message]] = []

    def send(arrive: float, machine: str, samples: list[Sample], connector: str) -> None:
        out.append((arrive, Message(bus.batch_topic(SITE, machine), bus.encode_batch(connector, samples), False)))

    def status(arrive: float, connector: str, state: str, machines: tuple[str, ...], session: str) -> None:
        out.append((arrive, _status(arrive, connector, state, machines, session)))

    status(NOW - 61 * 3600, "c1", "online", ("m1",), "s0")
    status(NOW - 31 * 3600, "c2", "online", ("m2",), "s1")
    # m1's state is set long before the restarted engine's memory begins; its connector dies before the
    # memory begins too and comes back as a new session 20 h ago: unknown until then, then the old state
    send(NOW - 60 * 3600, "m1", [Sample("m1", "state", _ms(NOW - 60 * 3600), 1),
                                 Sample("m1", "product", _ms(NOW - 60 * 3600), "a"),
                                 Sample("m1", "total", _ms(NOW - 60 * 3600), 100)], "c1")
    status(NOW - 55 * 3600, "c1", "offline", ("m1",), "s0")
    status(NOW - 20 * 3600, "c1", "online", ("m1",), "s1")
    totals = {"m1": 100, "m2": 0}
    rejects = {"m1": 0, "m2": 0}
    t = NOW - 30 * 3600
    while t < NOW - 60:
        t += rng.uniform(20, 90)
        for m in ("m1", "m2"):
            if m == "m2" and NOW - 5 * 3600 < t < NOW - 4 * 3600:
                continue  # m2's connector is down (and comes back as a new session: the hour is lost)
            if m == "m1" and t < NOW - 20 * 3600:
                continue
            smp: list[Sample] = []
            totals[m] += rng.randint(5, 60)
            smp.append(Sample(m, "total", _ms(t), totals[m]))
            if rng.random() < 0.3:
                rejects[m] += rng.randint(1, 3)
                smp.append(Sample(m, "reject", _ms(t), rejects[m]))
            if rng.random() < 0.15:
                smp.append(Sample(m, "state", _ms(t + 0.5), rng.choice([0, 1, 1, 1, 2, 3])))
            if m == "m1" and rng.random() < 0.01:
                smp.append(Sample(m, "product", _ms(t + 0.25), rng.choice(["a", "b"])))
            send(t + rng.uniform(0.05, 2.0), m, smp, "c1" if m == "m1" else "c2")
    status(NOW - 5 * 3600, "c2", "offline", ("m2",), "s1")
    status(NOW - 4 * 3600, "c2", "online", ("m2",), "s2")
    # c1 loses the broker for ten minutes and comes back with the same session: its spool is sent after
    status(NOW - 3 * 3600, "c1", "offline", ("m1",), "s1")
    status(NOW - 3 * 3600 + 60, "c1", "online", ("m1",), "s1")
    # a state within the allowed lateness (folded in) and one beyond it (dropped, dead-lettered)
    send(NOW - 3600 - 99, "m1", [Sample("m1", "state", _ms(NOW - 3600 - 100), 1)], "c1")
    send(NOW - 3600, "m1", [Sample("m1", "state", _ms(NOW - 3600 - 200), 0)], "c1")
    send(NOW - 3600 + 1, "m1", [Sample("m1", "state", _ms(NOW - 3600 - 4000), 2)], "c1")
    out.sort(key=lambda x: x[0])
    return out


def _key(r: KpiResult) -> tuple[str, str, str, float]:
    return (r.entity_kind, r.entity, r.window, r.start)


def _same(a: KpiResult, b: KpiResult) -> bool:
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        if (x is None) != (y is None) or (x is not None and not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-6)):
            return False
    return all(math.isclose(a.seconds[c], b.seconds[c], abs_tol=1e-6) for c in a.seconds) and \
        a.downtime_by_reason_s.keys() == b.downtime_by_reason_s.keys()


async def _feed(svc: EngineService, clock: list[float], traffic: list[tuple[float, Message]]) -> None:
    batch: list[Message] = []
    batch_end = traffic[0][0] + 60.0
    for arrive, msg in traffic:
        if arrive >= batch_end and batch:
            clock[0] = batch_end
            await svc.handle_messages(batch)
            svc.engine.timeline(clock[0])  # derived as the live ticks do, so late samples re-derive
            batch = []
            batch_end = arrive + 60.0
        batch.append(msg)
    clock[0] = batch_end
    await svc.handle_messages(batch)


async def _live_run(db: str, seed: int) -> EngineService:
    """The run before the restart: the traffic through the bus path, everything written to the database."""
    clock = [0.0]
    async with StorageWriter(db) as writer:
        live = EngineService(_plant(), bus.MqttSettings(), writer, clock=lambda: clock[0])
        await _feed(live, clock, _traffic(seed))
        await writer.flush(30)
    return live


async def test_a_restarted_engine_computes_what_the_last_run_did(db: str) -> None:
    plant = _plant()
    live = await _live_run(db, seed=3)
    assert live.engine.stats.late_dropped == 1 and live.engine.stats.rederived_machines >= 1
    want = {_key(r): r for r in live.engine.results(NOW)}

    async with StorageWriter(db) as writer:
        warm = EngineService(plant, bus.MqttSettings(), writer, clock=lambda: NOW)
        progress: list[float | None] = []
        ws = await warm.warm_start(on_chunk=lambda: progress.append(
            REGISTRY.get_sample_value("oee_engine_warm_start_progress_ratio")))
        # Nothing is known after the newest row read back until the connectors' retained statuses come:
        # both kept running here (same sessions), so nothing was lost.
        assert warm.engine.results(NOW)[0].state == "unknown"
        await warm.handle_messages([_status(NOW - 3 * 3600 + 60, "c1", "online", ("m1",), "s1"),
                                    _status(NOW - 4 * 3600, "c2", "online", ("m2",), "s2")])
    assert NOW - warm.engine.reach_s - 3600 < ws.start <= NOW - warm.engine.reach_s
    assert ws.events == 7 and ws.samples > 1000
    # progress is published hour by hour and rises to 1
    assert len(progress) >= 25 and progress == sorted(progress) and 0.0 < progress[0] < 0.1 and progress[-1] == 1.0  # type: ignore[type-var]
    assert REGISTRY.get_sample_value("oee_engine_warm_start_progress_ratio") == 1.0
    assert REGISTRY.get_sample_value("oee_engine_warm_start_seconds") == pytest.approx(ws.seconds)
    got = {_key(r): r for r in warm.engine.results(NOW)}
    assert got.keys() == want.keys()
    differ = [k for k in want if not _same(want[k], got[k])]
    assert not differ, [(k, want[k].oee, got[k].oee, want[k].seconds, got[k].seconds) for k in differ[:3]]
    # the lost hour of m2 is unknown time in both; m1 is unknown until its connector came back (14:00-16:00
    # of the late shift in the 24 h window), then in the state it had before
    day_m2 = next(r for k, r in got.items() if k[:3] == ("machine", "m2", "24h"))
    assert day_m2.seconds["unknown"] >= 3600 - 61  # from when the last will reached the engine
    day_m1 = next(r for k, r in got.items() if k[:3] == ("machine", "m1", "24h"))
    assert day_m1.seconds["unknown"] >= 2 * 3600 and day_m1.seconds["running"] > 0

    # A connector that restarted with the service (a new session) lost what happened while the service was
    # down: unknown from the newest row the engine read back.
    async with StorageWriter(db) as writer:
        again = EngineService(plant, bus.MqttSettings(), writer, clock=lambda: NOW)
        await again.warm_start()
        await again.handle_messages([_status(NOW - 3 * 3600 + 60, "c1", "online", ("m1",), "s1"),
                                     _status(NOW, "c2", "online", ("m2",), "s3")])
    with psycopg.connect(db) as conn:
        newest = conn.execute("SELECT extract(epoch FROM max(time))::float8 FROM samples").fetchone()[0]  # type: ignore[index]
    recent = {r.entity: r for r in again.engine.results(NOW) if r.window == "15m" and r.entity_kind == "machine"}
    assert recent["m2"].seconds["unknown"] == pytest.approx(NOW - newest, abs=1e-3)
    assert recent["m1"].seconds["unknown"] == 0.0

    # Without the warm start the same restart shows another day (this is what a restart used to do).
    async with StorageWriter(db) as writer:
        cold = EngineService(plant, bus.MqttSettings(), writer, clock=lambda: NOW, warm=False)
    cold_day = next(r for r in cold.engine.results(NOW) if _key(r)[:3] == ("machine", "m1", "24h"))
    assert not _same(cold_day, next(r for k, r in want.items() if k[:3] == ("machine", "m1", "24h")))


async def test_the_historian_keeps_what_the_engine_folded_in(db: str) -> None:
    """A sample dropped as late is a dead letter with its lag, not a stored sample; connector events are
    stored per machine at the time the engine applied them."""
    await _live_run(db, seed=5)
    late_t = datetime.fromtimestamp(_ms(NOW - 3600 - 4000), tz=UTC)
    with psycopg.connect(db) as conn:
        stored = conn.execute("SELECT count(*) FROM samples WHERE machine_id = 'm1' AND signal = 'state' "
                              "AND time = %s", (late_t,)).fetchone()
        dead = conn.execute("SELECT reason, topic FROM dead_letters").fetchall()
        events = conn.execute("SELECT machine_id, state, session, extract(epoch FROM time)::float8 "
                              "FROM connector_events ORDER BY time, machine_id").fetchall()
    assert stored == (0,)
    assert len(dead) == 1 and dead[0][0].startswith("late: ") and "allowed_lateness_s 300" in dead[0][0]
    assert dead[0][1] == bus.sample_topic(SITE, "m1", "state")
    assert [e[:3] for e in events] == [("m1", "online", "s0"), ("m1", "offline", "s0"), ("m2", "online", "s1"),
                                       ("m1", "online", "s1"), ("m2", "offline", "s1"), ("m2", "online", "s2"),
                                       ("m1", "offline", "s1"), ("m1", "online", "s1")]
    # an offline event (a last will) is applied when it arrives: the batch's time, not the will's
    assert events[4][3] == pytest.approx(NOW - 5 * 3600, abs=61)


async def test_the_warm_start_waits_for_the_database(database_url: str, mqtt_url: str) -> None:
    """A database that is not there yet when the service starts: the engine does not start without its
    memory (it would write a restarted shift over the stored one); it is ready once the database answers."""
    from oee_stream.embedded import with_database
    from oee_stream.storage.migrations import migrate

    name = f"oee_warm_{uuid.uuid4().hex[:8]}"
    url = with_database(database_url, name)
    async with StorageWriter(url, acquire_timeout_s=1.0) as writer:
        svc = EngineService(_plant(), bus.MqttSettings(url=mqtt_url), writer)
        task = asyncio.create_task(svc.run())
        try:
            async with asyncio.timeout(20):
                await svc.connected.wait()
            await asyncio.sleep(2.0)
            assert not svc.ready.is_set()  # no database, no memory: not ready
            assert REGISTRY.get_sample_value("oee_engine_ready") == 0.0
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            migrate(url)
            async with asyncio.timeout(60):
                await svc.ready.wait()
            assert REGISTRY.get_sample_value("oee_engine_ready") == 1.0
            assert REGISTRY.get_sample_value("oee_engine_warm_start_progress_ratio") == 1.0
        finally:
            task.cancel()
            await asyncio.wait({task}, timeout=10)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reads_alive() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if "warm_start.<locals>.fetch" in t.get_coro().__qualname__]  # type: ignore[union-attr]


async def test_a_failed_or_cancelled_warm_start_leaves_no_read_running(db: str) -> None:
    """The next hours are read ahead on other connections; a read that fails, or a warm start cancelled while
    reads are in flight, ends them all and gives their connections back."""
    started: list[float] = []
    blocked = asyncio.Event()

    async def failing(conn: Any, machines: Any, a: float, b: float) -> Any:
        started.append(a)
        if len(started) == 3:
            raise psycopg.OperationalError("the database went away")
        return await read_span(conn, machines, a, b)

    async def hanging(conn: Any, machines: Any, a: float, b: float) -> Any:
        started.append(a)
        if len(started) >= 2:
            blocked.set()
            await asyncio.Event().wait()
        return await read_span(conn, machines, a, b)

    async with StorageWriter(db) as writer:
        svc = EngineService(_plant(), bus.MqttSettings(), writer, clock=lambda: NOW)
        with pytest.raises(psycopg.OperationalError, match="went away"):
            await svc.warm_start(read=failing)
        assert len(started) in (3, 4) and not _reads_alive()

        started.clear()
        task = asyncio.create_task(EngineService(_plant(), bus.MqttSettings(), writer,
                                                 clock=lambda: NOW).warm_start(read=hanging))
        async with asyncio.timeout(10):
            await blocked.wait()
        assert len(_reads_alive()) == 2  # this hour and the next, each on its own connection
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not _reads_alive()
        stats = writer.pool.get_stats()
        assert stats.get("pool_size", 0) - stats.get("pool_available", 0) == 0, stats
