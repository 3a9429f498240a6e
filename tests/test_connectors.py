"""Connectors: Modbus decoding (pure), read planning, the publish buffer, and end to end over real TCP:
asyncua server / pymodbus server → connector → mosquitto → subscriber."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import math
import queue
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from harness import MqttProbe
from oee_stream import bus
from oee_stream.bus import MqttSettings, Sample
from oee_stream.connectors import (
    ConnectorStats,
    MemoryBuffer,
    ModbusConfig,
    OpcUaConfig,
    Publisher,
    build_connector,
    parse_connector,
)
from oee_stream.connectors.modbus import ReadBlock, bad_samples, decode_block, plan_reads
from oee_stream.connectors.modbus_codec import (
    BYTE_ORDERS,
    DecodeError,
    apply_scale,
    decode,
    encode,
    register_count,
)
from oee_stream.connectors.opcua import quality_of, sample_from_datavalue
from oee_stream.embedded import free_port

# ============================================================================================ Modbus codec

VALUES: dict[str, list[Any]] = {
    "int16": [0, 1, -1, -2, 12345, -32768, 32767],
    "uint16": [0, 1, 0x1234, 0xFFFF, 40000],
    "int32": [0, 1, -1, -123456, 2**31 - 1, -(2**31), 0x12345678],
    "uint32": [0, 1, 0x12345678, 2**32 - 1, 70000],
    "float32": [0.0, 1.5, -1.5, 123.456, -0.001, 3.4e38, 1e-30],
    "float64": [0.0, 1.5, -2.25, 123456.789012345, -1e300, 5e-324],
}


@pytest.mark.parametrize("order", BYTE_ORDERS)
@pytest.mark.parametrize("data_type", list(VALUES))
def test_roundtrip_every_type_and_byte_order(data_type: Any, order: Any) -> None:
    for v in VALUES[data_type]:
        regs = encode(v, data_type, order)
        assert len(regs) == register_count(data_type)
        assert all(0 <= r <= 0xFFFF for r in regs)
        got = decode(regs, data_type, order)
        if data_type == "float32":
            assert math.isclose(got, v, rel_tol=1e-6), (v, got)
        else:
            assert got == v
            assert type(got) is type(v)


@pytest.mark.parametrize("order", BYTE_ORDERS)
def test_bit_in_register_every_byte_order(order: Any) -> None:
    for bit in range(16):
        regs = encode(True, "bit", order, bit=bit)
        assert decode(regs, "bit", order, bit=bit) is True
        for other in range(16):
            assert decode(regs, "bit", order, bit=other) is (other == bit)
        assert decode(encode(False, "bit", order, bit=bit), "bit", order, bit=bit) is False


def test_known_wire_layouts() -> None:
    # 123.456 as float32 is 0x42F6E979: bytes A=42 B=F6 C=E9 D=79
    assert encode(123.456, "float32", "ABCD") == [0x42F6, 0xE979]
    assert encode(123.456, "float32", "CDAB") == [0xE979, 0x42F6]
    assert encode(123.456, "float32", "BADC") == [0xF642, 0x79E9]
    assert encode(123.456, "float32", "DCBA") == [0x79E9, 0xF642]
    assert decode([0xFFFF, 0xFFFE], "int32", "ABCD") == -2
    assert decode([0xFFFE, 0xFFFF], "int32", "CDAB") == -2
    assert decode([0xFFFE], "int16") == -2
    assert decode([0x3412], "uint16", "DCBA") == 0x1234
    assert decode([0x3412], "uint16", "BADC") == 0x1234
    assert decode([0x1234], "uint16", "CDAB") == 0x1234
    # float64 1.0 = 3FF0 0000 0000 0000; CDAB reverses the word order
    assert encode(1.0, "float64", "ABCD") == [0x3FF0, 0, 0, 0]
    assert encode(1.0, "float64", "CDAB") == [0, 0, 0, 0x3FF0]
    assert encode(1.0, "float64", "DCBA") == [0, 0, 0, 0xF03F]
    assert encode(1.0, "float64", "BADC") == [0xF03F, 0, 0, 0]
    # bit 0 is the least significant bit of the (byte-order corrected) register
    assert decode([0x0001], "bit", bit=0) is True
    assert decode([0x8000], "bit", bit=15) is True
    assert decode([0x0100], "bit", "DCBA", bit=0) is True
    assert decode([5], "bool") is True and decode([0], "bool") is False


def test_decode_errors_and_scaling() -> None:
    with pytest.raises(DecodeError, match="2 register"):
        decode([1], "float32")
    with pytest.raises(DecodeError, match=r"out of 0\.\.65535"):
        decode([70000], "uint16")
    with pytest.raises(DecodeError, match=r"bit 0\.\.15"):
        decode([1], "bit")
    with pytest.raises(DecodeError, match="does not fit"):
        encode(70000, "int16")
    assert apply_scale(250, 0.1, -5.0) == pytest.approx(20.0)
    assert apply_scale(7, 1.0, 0.0) == 7 and isinstance(apply_scale(7, 1.0, 0.0), int)
    assert apply_scale(True, 2.0, 1.0) is True


# ============================================================================================ read planning


def _regs(*specs: tuple[str, int, str]) -> list[Any]:
    cfg = parse_connector(
        {"kind": "modbus", "id": "p", "site": "s", "controller": "tcp://h:1",
         "registers": [{"machine": "m", "signal": f"s{i}", "register": k, "address": a,
                        "type": t} for i, (k, a, t) in enumerate(specs)]},
        env={},
    )
    assert isinstance(cfg, ModbusConfig)
    return list(cfg.registers)


def test_plan_reads_merges_contiguous_and_small_gaps() -> None:
    regs = _regs(("holding", 0, "uint16"), ("holding", 1, "float32"), ("holding", 3, "float32"),
                 ("holding", 9, "uint16"), ("holding", 30, "float64"), ("input", 0, "int16"),
                 ("coil", 5, "bool"), ("coil", 0, "bool"), ("discrete", 3, "bool"))
    blocks = plan_reads(regs, max_gap=8, max_registers=125)
    spans = [(b.register, b.start, b.count, len(b.items)) for b in blocks]
    assert spans == [("coil", 0, 6, 2), ("discrete", 3, 1, 1), ("holding", 0, 10, 4), ("holding", 30, 4, 1),
                     ("input", 0, 1, 1)]
    # no gap allowed: 0..4 contiguous, 9 separate
    assert [(b.start, b.count) for b in plan_reads(regs[:4], 0, 125)] == [(0, 5), (9, 1)]
    # request size limit
    assert [(b.start, b.count) for b in plan_reads(regs[:4], 8, 4)] == [(0, 3), (3, 2), (9, 1)]


def test_decode_block_and_bad_values() -> None:
    regs = _regs(("holding", 0, "uint16"), ("holding", 1, "float32"), ("holding", 3, "float32"))
    block = ReadBlock("holding", 0, 5, tuple(regs))
    words = [3, *encode(12.5, "float32"), *encode(float("nan"), "float32")]
    out = decode_block(block, words, [], "ABCD", 100.0)
    assert out[0] == Sample("m", "s0", 100.0, 3, "good")
    assert out[1] == Sample("m", "s1", 100.0, 12.5, "good")
    assert out[2] == Sample("m", "s2", 100.0, None, "bad")  # NaN is not a value
    assert bad_samples(regs[:1], 5.0) == [Sample("m", "s0", 5.0, None, "bad")]


# ============================================================================================ OPC UA values


def test_opcua_quality_and_timestamps() -> None:
    src = datetime(2024, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)
    srv = datetime(2024, 3, 1, 12, 0, 1, tzinfo=UTC)
    dv = ua.DataValue(ua.Variant(7, ua.VariantType.Int32), SourceTimestamp=src, ServerTimestamp=srv)
    assert sample_from_datavalue("m", "state", dv, 1.0) == Sample("m", "state", src.timestamp(), 7, "good")
    dv = ua.DataValue(ua.Variant(7, ua.VariantType.Int32), ServerTimestamp=srv)
    assert sample_from_datavalue("m", "state", dv, 1.0).ts == srv.timestamp()
    dv = ua.DataValue(ua.Variant(7, ua.VariantType.Int32))
    assert sample_from_datavalue("m", "state", dv, 1.0).ts == 1.0
    dv = ua.DataValue(ua.Variant(7, ua.VariantType.Int32), StatusCode=ua.StatusCode(ua.StatusCodes.BadCommunicationError),
                      SourceTimestamp=src)
    assert sample_from_datavalue("m", "state", dv, 1.0) == Sample("m", "state", src.timestamp(), None, "bad")
    assert quality_of(ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)) == "uncertain"
    dv = ua.DataValue(ua.Variant(float("inf"), ua.VariantType.Double), SourceTimestamp=src)
    assert sample_from_datavalue("m", "t", dv, 1.0).quality == "bad"


# ============================================================================================ buffer


def test_memory_buffer_is_bounded_and_acks_by_sequence() -> None:
    buf = MemoryBuffer(3)
    s = [Sample("m", "total", float(i), i) for i in range(5)]
    assert buf.put(s[:2]) == 0
    batch = buf.peek(10)
    assert [x.value for _, x in batch] == [0, 1]
    assert buf.put(s[2:]) == 2  # full: the two oldest go
    assert [x.value for _, x in buf.peek(10)] == [2, 3, 4]
    buf.ack(q for q, _ in batch)  # acking already-dropped samples is harmless
    assert len(buf) == 3
    buf.ack([q for q, _ in buf.peek(1)])
    assert [x.value for _, x in buf.peek(10)] == [3, 4]


def test_bus_batch_roundtrip_and_errors() -> None:
    samples = [Sample("furnace-1", "total", 10.0, 1.5), Sample("furnace-1", "state", 10.0, 3),
               Sample("furnace-1", "total", 10.5, 1.75), Sample("furnace-1", "temperature", 10.5, None, "bad")]
    topic = bus.batch_topic("site", "furnace-1")
    assert topic == "oee/v1/site/furnace-1/_batch"
    conn, got = bus.decode_samples(topic, bus.encode_batch("mb", samples))
    assert conn == "mb"
    # grouped by signal, each signal's samples in their order
    assert sorted(got, key=lambda s: (s.signal, s.ts)) == sorted(samples, key=lambda s: (s.signal, s.ts))
    for payload, reason in [
        (b'{"v":1,"signals":{}}', "'signals' must be a non-empty object"),
        (b'{"v":1,"samples":[{"ts":1,"value":1}]}', "'signals' must be a non-empty object"),
        (b'{"v":1,"signals":{"_x":[{"ts":1,"value":1}]}}', "is not a signal name"),
        (b'{"v":1,"signals":{"total":[{"ts":"x","value":1}]}}', "signals.total[0].ts must be epoch seconds"),
        (b'{"v":1,"signals":{"total":[]}}', "'signals.total' must be a non-empty list"),
    ]:
        with pytest.raises(bus.PayloadError, match=re.escape(reason)):
            bus.decode_samples(topic, payload)
    with pytest.raises(bus.PayloadError, match="is not oee/v1"):
        bus.decode_samples("oee/v1/site/_status/_batch", bus.encode_batch("mb", samples))


# ============================================================================================ end to end helpers


class Collector:
    """Subscribes to one site's topics and decodes what arrives (samples and connector status)."""

    def __init__(self, url: str, site: str) -> None:
        self.site = site
        self.probe = MqttProbe(url).connect()
        self.probe.subscribe(f"oee/v1/{site}/#")
        self.samples: list[Sample] = []
        self.status: dict[str, tuple[bus.ConnectorStatus, bool]] = {}
        self.messages = 0
        self.topics: set[str] = set()

    def pump(self) -> None:
        while True:
            try:
                msg = self.probe.messages.get_nowait()
            except queue.Empty:
                return
            if "/_status/" in msg.topic:
                self.status[msg.topic.rsplit("/", 1)[1]] = (bus.decode_status(msg.payload), bool(msg.retain))
            else:
                _conn, samples = bus.decode_samples(msg.topic, msg.payload)
                self.samples += samples
                self.messages += 1
                self.topics.add(msg.topic)

    def latest(self, machine: str, signal: str) -> Sample | None:
        got = [s for s in self.samples if s.machine == machine and s.signal == signal]
        return got[-1] if got else None

    async def wait(self, pred: Callable[[Collector], Any], timeout_s: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.pump()
            if pred(self):
                return
            if time.monotonic() > deadline:
                tail = [(s.machine, s.signal, s.value, s.quality) for s in self.samples[-12:]]
                raise TimeoutError(f"timed out waiting for {what or pred}; last samples: {tail}")
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.probe.close()


@contextlib.asynccontextmanager
async def running(conn: Any) -> AsyncIterator[asyncio.Task[None]]:
    """Run a connector in a task; on exit cancel it and check it left no task behind."""
    before = asyncio.all_tasks()
    task = asyncio.create_task(conn.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        await asyncio.sleep(0.05)
        # tasks of test servers started meanwhile (asyncua / pymodbus server side) are not the connector's
        leftover = [t for t in asyncio.all_tasks() - before
                    if not t.done() and "/server/" not in t.get_coro().cr_code.co_filename]  # type: ignore[union-attr]
        assert not leftover, f"tasks left running after cancel: {leftover}"


def new_site() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


# ============================================================================================ OPC UA e2e

NS = "urn:oee-stream:sim"
T0 = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
INITIAL: dict[str, tuple[Any, ua.VariantType]] = {
    "State": (1, ua.VariantType.Int32),
    "TotalCount": (100, ua.VariantType.UInt32),
    "RejectCount": (2, ua.VariantType.UInt32),
    "Product": ("6063-T5", ua.VariantType.String),
}
SIGNALS = {"State": "state", "TotalCount": "total", "RejectCount": "reject", "Product": "product"}


class UaSim:
    """A tiny asyncua server with the demo node map (string NodeIds `{machine}.{Var}` in `urn:oee-stream:sim`)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/oee-stream/sim/"
        self.server: Server | None = None
        self.idx = 0
        self.nodes: dict[str, Any] = {}

    async def start(self, ts: datetime = T0) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.idx = await server.register_namespace(NS)
        for machine in ("press-1", "caster-1"):
            obj = await server.nodes.objects.add_object(self.idx, machine)
            for var, (value, vtype) in INITIAL.items():
                node = await obj.add_variable(ua.NodeId(f"{machine}.{var}", self.idx), var, ua.Variant(value, vtype))
                self.nodes[f"{machine}.{var}"] = node
        await server.start()
        self.server = server
        for key, (value, vtype) in INITIAL.items():
            for machine in ("press-1", "caster-1"):
                await self.write(f"{machine}.{key}", value, vtype, ts)

    async def write(self, name: str, value: Any, vtype: ua.VariantType, ts: datetime,
                    status: int = ua.StatusCodes.Good) -> None:
        assert self.server is not None
        dv = ua.DataValue(ua.Variant(value, vtype), StatusCode=ua.StatusCode(status), SourceTimestamp=ts,
                          ServerTimestamp=datetime.now(UTC))
        await self.server.write_attribute_value(self.nodes[name].nodeid, dv)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None


def ua_config(site: str, endpoint: str, **over: Any) -> OpcUaConfig:
    nodes = []
    for machine in ("press-1", "caster-1"):
        for var, signal in SIGNALS.items():
            # mix both NodeId spellings: by namespace index and by namespace URI
            nid = f"ns=2;s={machine}.{var}" if machine == "press-1" else f"nsu={NS};s={machine}.{var}"
            nodes.append({"node_id": nid, "machine": machine, "signal": signal})
    data = {
        "kind": "opcua", "id": "ua-test", "site": site, "endpoint": "${EP}",
        "publishing_interval_ms": 50, "sampling_interval_ms": 0, "timeout_s": 2, "watchdog_interval_s": 0.3,
        "reconnect_initial_s": 0.2, "reconnect_max_s": 1, "publish": {"linger_ms": 10},
        "nodes": nodes,
    }
    data.update(over)
    cfg = parse_connector(data, env={"EP": endpoint})
    assert isinstance(cfg, OpcUaConfig)
    return cfg


def have_all(c: Collector, ts: float, quality: str = "good") -> bool:
    for machine in ("press-1", "caster-1"):
        for signal in SIGNALS.values():
            s = c.latest(machine, signal)
            if s is None or s.ts != ts or s.quality != quality:
                return False
    return True


def have_all_since(c: Collector, since: float, quality: str = "good") -> bool:
    """Every node has a latest sample of this quality stamped at or after `since`."""
    for machine in ("press-1", "caster-1"):
        for signal in SIGNALS.values():
            s = c.latest(machine, signal)
            if s is None or s.ts < since or s.quality != quality:
                return False
    return True


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


async def test_opcua_subscription_to_broker(mqtt_url: str) -> None:
    sim = UaSim(free_port())
    await sim.start()
    site = new_site()
    col = Collector(mqtt_url, site)
    cfg = ua_config(site, sim.endpoint, max_nodes_per_subscription=3)
    conn = build_connector(cfg, MqttSettings(mqtt_url))
    try:
        t_start = time.time()
        async with running(conn):
            await col.wait(lambda c: have_all_since(c, 0.0), what="initial values")
            # The first session of a process keeps the PLC's true source times (the values last changed
            # long before the connector started); only a reconnection restamps (see test_opcua_reconnect_*).
            first = col.latest("press-1", "state")
            assert first is not None and (first.value, first.quality) == (1, "good")
            assert first.ts < t_start
            assert conn.stats.extra["initial_restamped"] == 0
            assert col.latest("caster-1", "product").value == "6063-T5"  # type: ignore[union-attr]
            assert col.latest("caster-1", "total").value == 100  # type: ignore[union-attr]
            status, retained = col.status["ua-test"]
            assert retained is False  # live message; a late subscriber gets it retained
            assert status.state == "online" and set(status.machines) == {"press-1", "caster-1"}
            assert conn.stats.extra["subscriptions"] == 3  # 8 nodes, at most 3 per subscription

            # every later change arrives with its own source timestamp, in order
            base = time.time()
            for i in range(1, 6):
                await sim.write("press-1.TotalCount", 100 + i, ua.VariantType.UInt32, _ts(base + i))
                await asyncio.sleep(0.02)
            await col.wait(lambda c: c.latest("press-1", "total").value == 105,  # type: ignore[union-attr]
                           what="count 105")
            totals = [(s.ts - base, s.value) for s in col.samples if s.signal == "total"
                      and s.machine == "press-1"]
            assert totals[-5:] == [(pytest.approx(i), 100 + i) for i in range(1, 6)]

            # a Bad status code → quality bad, value null
            t_bad = _ts(base + 10)
            await sim.write("caster-1.State", 1, ua.VariantType.Int32, t_bad, ua.StatusCodes.BadDeviceFailure)
            await col.wait(lambda c: c.latest("caster-1", "state").quality == "bad",  # type: ignore[union-attr]
                           what="bad state")
            assert col.latest("caster-1", "state") == Sample("caster-1", "state", t_bad.timestamp(), None, "bad")
            # the subscriber may see a message before the connector has its PUBACK: wait for the ack
            await col.wait(lambda c: conn.stats.buffered == 0, what="all samples acknowledged")
            assert conn.stats.samples_published == conn.stats.samples_received >= 14
            assert conn.stats.dropped == 0
        # cancelled: the connector said offline (retained) before leaving
        await col.wait(lambda c: c.status["ua-test"][0].state == "offline", what="offline status")
    finally:
        col.close()
        await sim.stop()


async def test_opcua_reconnect_stamps_unchanged_values_after_the_outage(mqtt_url: str) -> None:
    """Issue 4: after a reconnect the server re-sends values unchanged since before the outage, with their old
    SourceTimestamp. They must land after the `bad` samples of the outage, or the engine (which orders by
    source time) keeps the machine `unknown` until the next change."""
    from engine_fixtures import plant as small_plant
    from oee_stream.engine import Engine
    from oee_stream.engine.plant import RUNNING

    port = free_port()
    sim = UaSim(port)
    t_old = time.time() - 3600  # the values last changed an hour ago
    await sim.start(ts=_ts(t_old))
    site = new_site()
    col = Collector(mqtt_url, site)
    conn = build_connector(ua_config(site, sim.endpoint), MqttSettings(mqtt_url))
    try:
        async with running(conn):
            await col.wait(lambda c: have_all_since(c, t_old - 1), what="initial values")  # µs rounding
            await sim.stop()
            await col.wait(lambda c: have_all_since(c, t_old, "bad"), what="bad samples after server stop")
            t_bad = max(col.latest(m, s).ts for m in ("press-1", "caster-1")  # type: ignore[union-attr]
                        for s in SIGNALS.values())
            assert not conn.stats.source_connected
            # the PLC comes back; nothing changed meanwhile: same values, same (old) source timestamps
            await sim.start(ts=_ts(t_old))
            await col.wait(lambda c: have_all_since(c, t_bad), timeout_s=15, what="values after reconnect")
            assert conn.stats.reconnects == 1 and conn.stats.source_connected
            assert conn.stats.source_errors >= 1
            for m in ("press-1", "caster-1"):
                for sig in SIGNALS.values():
                    s = col.latest(m, sig)
                    assert s is not None and s.quality == "good" and t_bad < s.ts <= time.time(), (m, sig, s)
            assert col.latest("press-1", "state").value == 1  # type: ignore[union-attr]
            # a change after the reconnect keeps its true source timestamp
            t_change = time.time() + 0.5
            await sim.write("press-1.State", 2, ua.VariantType.Int32, _ts(t_change))
            await col.wait(lambda c: c.latest("press-1", "state").value == 2,  # type: ignore[union-attr]
                           what="state change after reconnect")
            assert col.latest("press-1", "state").ts == pytest.approx(t_change)  # type: ignore[union-attr]

        # What the engine makes of it: running before the outage, unknown during it, running again after.
        eng = Engine(small_plant(machines=[{"id": "press-1", "state_table": "t",
                                            "products": {"a": {"ideal_cycle_time_s": 1.0}}}]))
        states = [s for s in col.samples if s.machine == "press-1" and s.signal == "state" and s.value != 2]
        assert [s.quality for s in states] == ["good", "bad", "good"]
        eng.ingest(states, now=time.time())
        assert int(eng.timeline(states[-1].ts + 1.0).cur_cls[0]) == RUNNING
    finally:
        col.close()
        await sim.stop()


async def test_opcua_server_down_at_start_then_up_with_old_values(mqtt_url: str) -> None:
    """The connector starts while the server is unreachable: it publishes every node as bad. When the server
    comes up its values (unchanged, old source times) must land after those bad samples."""
    sim = UaSim(free_port())
    site = new_site()
    col = Collector(mqtt_url, site)
    conn = build_connector(ua_config(site, sim.endpoint), MqttSettings(mqtt_url))
    t_old = time.time() - 3600
    try:
        async with running(conn):
            await col.wait(lambda c: have_all_since(c, t_old, "bad"), what="bad samples, server unreachable")
            t_bad = max(col.latest(m, s).ts for m in ("press-1", "caster-1")  # type: ignore[union-attr]
                        for s in SIGNALS.values())
            await sim.start(ts=_ts(t_old))
            await col.wait(lambda c: have_all_since(c, t_bad), timeout_s=15, what="values after the server came up")
            assert conn.stats.extra["initial_restamped"] == 8 and conn.stats.reconnects == 0
    finally:
        col.close()
        await sim.stop()


async def test_opcua_a_node_that_cannot_be_resolved_fails_alone(caplog: pytest.LogCaptureFixture) -> None:
    """A node with a namespace URI the server does not have (or an id the server does not know) is published
    bad once and logged once at WARNING; the other nodes keep flowing, also after a reconnect. An outage
    meanwhile is logged when it starts and when its cause changes, not at every attempt, without asyncua's
    teardown tracebacks."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="oee_stream.connectors.opcua")
    sim = UaSim(free_port())
    await sim.start()
    wrong_uri = {"node_id": "nsu=urn:wrong:ns;s=caster-1.Temp", "machine": "caster-1", "signal": "temperature"}
    unknown = {"node_id": "ns=2;s=press-1.Nope", "machine": "press-1", "signal": "speed"}
    nodes = [n.model_dump(exclude_none=True) for n in ua_config("s", sim.endpoint).nodes]
    cfg = ua_config("s", sim.endpoint, nodes=[*nodes[:4], wrong_uri, *nodes[4:], unknown])
    conn = build_connector(cfg, MqttSettings())
    got: list[Sample] = []
    task = asyncio.create_task(conn.run_source(got.extend))  # type: ignore[attr-defined]

    def latest(machine: str, signal: str) -> Sample | None:
        return next((x for x in reversed(got) if (x.machine, x.signal) == (machine, signal)), None)

    async def until(pred: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; stats {conn.stats.as_dict()}"
            await asyncio.sleep(0.02)

    def cannot_monitor(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "oee_stream.connectors.opcua" and r.levelno == level and "cannot monitor" in r.getMessage()]

    def all_good() -> bool:
        return all((x := latest(m, sig)) is not None and x.quality == "good"
                   for m in ("press-1", "caster-1") for sig in SIGNALS.values())

    try:
        await until(all_good, "the good nodes")
        assert [(x.value, x.quality) for x in got if x.signal in ("temperature", "speed")] == [
            (None, "bad"), (None, "bad")]
        assert cannot_monitor(logging.WARNING) == [
            f"connector ua-test: cannot monitor nsu=urn:wrong:ns;s=caster-1.Temp (caster-1/temperature): namespace "
            f"URI 'urn:wrong:ns' is not on the server; it has: ['http://opcfoundation.org/UA/', "
            f"'urn:freeopcua:python:server', '{NS}']",
            "connector ua-test: cannot monitor ns=2;s=press-1.Nope (press-1/speed): BadNodeIdUnknown",
        ]
        assert f"connector ua-test: subscribed to 8 of 10 nodes on {sim.endpoint} (2 cannot be monitored, see " \
               "above)" in caplog.messages
        stats = conn.stats.extra
        assert (stats["monitored_items"], stats["bad_nodes"]) == (8, 2)
        assert conn.stats.source_connected and conn.stats.last_error is None
        base = time.time()
        await sim.write("caster-1.TotalCount", 101, ua.VariantType.UInt32, _ts(base))
        await until(lambda: latest("caster-1", "total").value == 101, "a change of a good node")  # type: ignore[union-attr]

        # an outage long enough for several attempts: logged at its start and when its cause changes
        caplog.clear()
        await sim.stop()
        await until(lambda: conn.stats.source_errors >= 6, "several failed attempts")
        await sim.start()
        await until(lambda: conn.stats.reconnects == 1 and all_good(), "the good nodes after the reconnect")
        ours = [r for r in caplog.records if r.name == "oee_stream.connectors.opcua" and r.levelno >= logging.WARNING]
        assert 1 <= len(ours) <= 3, [r.getMessage() for r in ours]  # lost, then refused (maybe a timeout)
        assert any("is back after" in m for m in caplog.messages)
        noise = [r.getMessage() for r in caplog.records if r.name.startswith("asyncua.client")
                 and ("connection is closed" in r.getMessage() or "Publish iteration crashed" in r.getMessage())]
        assert noise == []
        # the same failures again: a bad sample each, no second warning, the gauge is this session's
        assert cannot_monitor(logging.WARNING) == [] and len(cannot_monitor(logging.DEBUG)) == 2
        assert (stats["monitored_items"], stats["bad_nodes"]) == (8, 2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        await sim.stop()


# ============================================================================================ Modbus e2e

FURNACE = {"status": 1, "tapped": 12.5, "charged": 14.25, "offspec": 0.75, "temp": 731.5, "product": 1}


def furnace_registers(order: Any = "ABCD", **over: Any) -> list[int]:
    v = {**FURNACE, **over}
    return [
        *encode(v["status"], "uint16", order),
        *encode(v["tapped"], "float32", order),
        *encode(v["charged"], "float32", order),
        *encode(v["offspec"], "float32", order),
        *encode(v["temp"], "float32", order),
        *encode(v["product"], "uint16", order),
    ]


class MbSim:
    def __init__(self, port: int) -> None:
        self.port = port
        self.server: ModbusTcpServer | None = None

    async def start(self, registers: list[int]) -> None:
        dev = SimDevice(1, simdata=[SimData(0, count=40, values=0, datatype=SimType.REGISTERS)])
        self.server = ModbusTcpServer(dev, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)
        await self.set(0, registers)

    async def set(self, address: int, registers: list[int]) -> None:
        assert self.server is not None
        await self.server.async_setValues(1, 16, address, registers)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None


def mb_config(site: str, port: int, order: str = "ABCD", extra: list[dict[str, Any]] | None = None,
              batching: str = "per_signal") -> ModbusConfig:
    regs = [
        {"machine": "furnace-1", "signal": "state", "address": 0, "type": "uint16"},
        {"machine": "furnace-1", "signal": "total", "address": 1, "type": "float32"},
        {"machine": "furnace-1", "signal": "input", "address": 3, "type": "float32"},
        {"machine": "furnace-1", "signal": "reject", "address": 5, "type": "float32"},
        {"machine": "furnace-1", "signal": "product", "address": 9, "type": "uint16"},
    ]
    cfg = parse_connector(
        {
            "kind": "modbus", "id": "mb-test", "site": site, "controller": "tcp://127.0.0.1:${PORT}",
            "byte_order": order, "timeout_s": 0.5, "poll_interval_ms": 100,
            "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5,
            "publish": {"linger_ms": 10, "batching": batching},
            "registers": regs + (extra or []),
            "groups": [{"name": "slow", "poll_interval_ms": 300, "registers": [
                {"machine": "furnace-1", "signal": "temperature", "address": 7, "type": "float32"}]}],
        },
        env={"PORT": str(port)},
    )
    assert isinstance(cfg, ModbusConfig)
    return cfg


def furnace_ok(c: Collector, **over: Any) -> bool:
    v = {**FURNACE, **over}
    want = {"state": v["status"], "total": v["tapped"], "input": v["charged"], "reject": v["offspec"],
            "temperature": v["temp"], "product": v["product"]}
    for signal, value in want.items():
        s = c.latest("furnace-1", signal)
        if s is None or s.quality != "good" or s.value != value:
            return False
    return True


@pytest.mark.parametrize(("order", "batching"), [("ABCD", "per_signal"), ("CDAB", "per_machine")])
async def test_modbus_poll_to_broker_and_recovery(mqtt_url: str, order: str, batching: str) -> None:
    port = free_port()
    sim = MbSim(port)
    await sim.start(furnace_registers(order))
    site = new_site()
    col = Collector(mqtt_url, site)
    conn = build_connector(mb_config(site, port, order, batching=batching), MqttSettings(mqtt_url))
    try:
        async with running(conn):
            t_before = time.time()
            await col.wait(furnace_ok, what="decoded furnace values")
            if batching == "per_machine":
                # Every signal of a poll in one message on the machine's _batch topic.
                assert col.topics == {bus.batch_topic(site, "furnace-1")}
                assert col.messages < len(col.samples) / 3, (col.messages, len(col.samples))
            else:
                assert bus.sample_topic(site, "furnace-1", "total") in col.topics
            s = col.latest("furnace-1", "total")
            assert s is not None and t_before - 1 <= s.ts <= time.time()  # response time, epoch seconds
            assert isinstance(col.latest("furnace-1", "state").value, int)  # type: ignore[union-attr]
            assert col.status["mb-test"][0].state == "online"

            await sim.set(0, furnace_registers(order, status=4, tapped=13.0))
            await col.wait(lambda c: furnace_ok(c, status=4, tapped=13.0), what="updated values")

            await sim.stop()
            await col.wait(lambda c: all(c.latest("furnace-1", sig).quality == "bad"  # type: ignore[union-attr]
                                         for sig in ("state", "total", "input", "reject", "product", "temperature")),
                           what="bad samples while the PLC is down")
            bad = col.latest("furnace-1", "state")
            assert bad is not None and bad.value is None
            errors = conn.stats.source_errors
            assert errors >= 1

            await sim.start(furnace_registers(order, tapped=20.0))
            await col.wait(lambda c: furnace_ok(c, tapped=20.0), what="recovered values")
            assert conn.stats.reconnects >= 1 and conn.stats.source_connected
            # Modbus stamps a value with the response time: after a reconnect every signal's first good
            # sample is later than its last bad one, so the engine's unknown time ends at the reconnect.
            for sig in ("state", "total", "input", "reject", "product", "temperature"):
                series = [x for x in col.samples if x.machine == "furnace-1" and x.signal == sig]
                last_bad = max(i for i, x in enumerate(series) if x.quality == "bad")
                recovered = next(x for x in series[last_bad:] if x.quality == "good")
                assert recovered.ts > series[last_bad].ts, sig
                assert all(b.ts >= a.ts for a, b in itertools.pairwise(series)), sig
    finally:
        col.close()
        await sim.stop()


async def test_modbus_exception_response_marks_only_that_block_bad(mqtt_url: str) -> None:
    port = free_port()
    sim = MbSim(port)
    await sim.start(furnace_registers())
    site = new_site()
    col = Collector(mqtt_url, site)
    # address 200 is outside the simulated device: the server answers with an exception response
    cfg = mb_config(site, port, extra=[{"machine": "furnace-1", "signal": "pressure", "address": 200}])
    conn = build_connector(cfg, MqttSettings(mqtt_url))
    try:
        async with running(conn):
            await col.wait(lambda c: furnace_ok(c) and c.latest("furnace-1", "pressure") is not None,
                           what="values and the failing register")
            p = col.latest("furnace-1", "pressure")
            assert p is not None and p.quality == "bad" and p.value is None
            assert conn.stats.extra["exception_responses"] >= 1
            assert conn.stats.reconnects == 0  # the connection stays up
    finally:
        col.close()
        await sim.stop()


# ============================================================================================ store and forward


async def test_publisher_buffers_while_broker_down_and_delivers_after(mqtt_broker: Any) -> None:
    site = new_site()
    stats = ConnectorStats("buf-test")
    mqtt_broker.stop()
    try:
        pub = Publisher("buf-test", site, ["press-1"], MqttSettings(mqtt_broker.url), stats,
                        buffer_size=50, linger_s=0.0, retry_max_s=0.5)
        async with pub:
            pub.submit([Sample("press-1", "total", 1000.0 + i, i) for i in range(60)])
            await asyncio.sleep(0.3)
            assert stats.samples_published == 0 and stats.buffered == 50 and stats.dropped == 10
            mqtt_broker.start()
            col = Collector(mqtt_broker.url, site)
            try:
                assert await pub.flush(timeout_s=15), "buffer not drained after the broker came back"
                await col.wait(lambda c: len(c.samples) >= 50, what="buffered samples")
                assert [s.value for s in col.samples] == list(range(10, 60))  # oldest dropped, order kept
                assert stats.samples_published == 50 and stats.buffered == 0
                assert col.messages <= 2  # batched per (machine, signal)
            finally:
                col.close()
    finally:
        mqtt_broker.start()


USERS = {"oee": "s3cret"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real self-signed certificates, made once per module: the server, the client and an impostor server
    (same application URI and host name as the server, another key)."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    d = tmp_path_factory.mktemp("pki")
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]

    async def make() -> None:
        for name, uri in (("srv", "urn:oee:test:server"), ("cli", "urn:oee:test:client"),
                          ("impostor", "urn:oee:test:server")):
            await setup_self_signed_certificate(d / f"{name}-key.pem", d / f"{name}-cert.der", uri, "localhost",
                                                usage, {"commonName": name})

    # Its own thread and loop: the test's event loop is not running while a sync fixture is set up.
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        ex.submit(asyncio.run, make()).result(timeout=60)
    return d


class _Users(UserManager):
    """Accepts USERS only, and remembers who asked (an impostor must never see a password)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str | None]] = []

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        self.calls.append((username, password))
        return User(role=UserRole.User) if username is not None and USERS.get(username) == password else None


async def _secure_server(pki: Path, policy: ua.SecurityPolicyType, users: _Users | None) -> tuple[Server, str]:
    """An asyncua server offering exactly one secured endpoint (no plain one), optionally with logins only."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sec/"
    server = Server(user_manager=users)
    await server.init()
    server.set_endpoint(endpoint)
    await server.load_certificate(str(pki / "srv-cert.der"))
    await server.load_private_key(str(pki / "srv-key.pem"))
    server.set_security_policy([policy])
    if users is not None:
        server.set_identity_tokens([ua.UserNameIdentityToken])  # anonymous sessions refused
    idx = await server.register_namespace(NS)
    obj = await server.nodes.objects.add_object(idx, "press-1")
    await obj.add_variable(ua.NodeId("press-1.State", idx), "State", ua.Variant(3, ua.VariantType.Int32))
    await server.start()
    return server, endpoint


def _secure_config(site: str, endpoint: str, pki: Path, policy: str, mode: str, **over: Any) -> Any:
    return parse_connector(
        {"kind": "opcua", "id": "ua-sec", "site": site, "endpoint": endpoint,
         "security_policy": policy, "security_mode": mode,
         "certificate": str(pki / "cli-cert.der"), "private_key": str(pki / "cli-key.pem"),
         "server_certificate": str(pki / "srv-cert.der"), "application_uri": "urn:oee:test:client",
         "publishing_interval_ms": 50, "publish": {"linger_ms": 10}, "reconnect_initial_s": 0.2,
         "reconnect_max_s": 0.5,
         "nodes": [{"node_id": f"nsu={NS};s=press-1.State", "machine": "press-1", "signal": "state"}], **over},
        env={},
    )


@pytest.mark.parametrize(("policy", "mode", "login"), [
    ("Basic256Sha256", "SignAndEncrypt", False),
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt", False),
    ("Aes128_Sha256_RsaOaep", "Sign", True),
    ("Aes256_Sha256_RsaPss", "SignAndEncrypt", True),
])
async def test_opcua_security_policies(mqtt_url: str, pki: Path, policy: str, mode: str, login: bool) -> None:
    server_policy = getattr(ua.SecurityPolicyType, f"{policy.replace('_', '')}_{mode}")
    users = _Users() if login else None
    server, endpoint = await _secure_server(pki, server_policy, users)
    site = new_site()
    col = Collector(mqtt_url, site)
    extra = {"username": "oee", "password": USERS["oee"]} if login else {}
    conn = build_connector(_secure_config(site, endpoint, pki, policy, mode, **extra), MqttSettings(mqtt_url))
    try:
        async with running(conn):
            await col.wait(lambda c: c.latest("press-1", "state") is not None, what=f"state over {policy}/{mode}")
            s = col.latest("press-1", "state")
            assert s is not None and s.value == 3 and s.quality == "good"
            assert conn.stats.last_error is None
        if users is not None:
            assert ("oee", USERS["oee"]) in users.calls
    finally:
        col.close()
        await server.stop()


@pytest.mark.parametrize("case", ["wrong_password", "impostor_server", "policy_not_offered"])
async def test_opcua_security_rejections_are_clear(mqtt_url: str, pki: Path, case: str) -> None:
    users = _Users()
    server, endpoint = await _secure_server(pki, ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt, users)
    site = new_site()
    col = Collector(mqtt_url, site)
    policy, mode = "Aes256_Sha256_RsaPss", "SignAndEncrypt"
    over: dict[str, Any] = {"username": "oee", "password": "wrong"}
    expect = "rejected user 'oee' (BadUserAccessDenied): check username and password"
    if case == "impostor_server":
        # The connector pinned another certificate: the real server (here) is the impostor for it.
        over = {"username": "oee", "password": USERS["oee"], "server_certificate": str(pki / "impostor-cert.der")}
        expect = "not the pinned server_certificate"
    elif case == "policy_not_offered":
        over, policy, mode = {}, "Basic256Sha256", "Sign"
        # readable, as the config keys are written (asyncua calls the mode None_)
        expect = ("does not offer security_policy Basic256Sha256 with security_mode Sign; it offers "
                  "(security_policy/security_mode): Aes256_Sha256_RsaPss/SignAndEncrypt")
    conn = build_connector(_secure_config(site, endpoint, pki, policy, mode, **over), MqttSettings(mqtt_url))
    try:
        async with running(conn):
            await col.wait(lambda c: conn.stats.source_errors >= 2, what="two refused attempts")
            assert conn.stats.last_error is not None and expect in conn.stats.last_error, conn.stats.last_error
            assert not conn.stats.source_connected and conn.stats.reconnects == 0
            await col.wait(lambda c: c.latest("press-1", "state") is not None, what="the bad state sample")
            assert all(x.quality == "bad" for x in col.samples)  # unknown time, no value from that server
        if case in ("impostor_server", "policy_not_offered"):
            assert users.calls == []  # refused before any session: no password ever reached that server
    finally:
        col.close()
        await server.stop()


# ============================================================================================ Prometheus


def test_connector_metrics_collector() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from oee_stream.connectors.metrics import connector_collector, register_connector_metrics

    reg = CollectorRegistry()
    ua_conn = build_connector(ua_config("site", "opc.tcp://127.0.0.1:4840/"), MqttSettings())
    mb_conn = build_connector(mb_config("site", 502), MqttSettings())
    ua_conn.stats.samples_received, ua_conn.stats.dropped = 42, 3
    ua_conn.stats.source_connected, ua_conn.stats.buffered = True, 7
    ua_conn.stats.extra["initial_restamped"] = 8
    mb_conn.stats.extra["polls"] = 5
    col = register_connector_metrics([ua_conn, mb_conn], registry=reg)
    text = generate_latest(reg).decode()
    assert 'oee_connector_samples_received_total{connector="ua-test",kind="opcua"} 42.0' in text
    assert 'oee_connector_dropped_total{connector="ua-test",kind="opcua"} 3.0' in text
    assert 'oee_connector_source_connected{connector="ua-test",kind="opcua"} 1.0' in text
    assert 'oee_connector_buffered_samples{connector="ua-test",kind="opcua"} 7.0' in text
    assert 'oee_connector_initial_restamped_total{connector="ua-test",kind="opcua"} 8.0' in text
    assert 'oee_connector_polls_total{connector="mb-test",kind="modbus"} 5.0' in text
    assert 'oee_connector_monitored_items{connector="ua-test",kind="opcua"} 0.0' in text  # a gauge extra
    assert 'last_sample_timestamp_seconds{connector="ua-test"' not in text  # no sample yet: no value
    # read at scrape time, no update call needed
    ua_conn.stats.samples_received = 43
    assert 'samples_received_total{connector="ua-test",kind="opcua"} 43.0' in generate_latest(reg).decode()
    # registering again (a second service in the process) replaces the set and does not re-register
    assert register_connector_metrics([mb_conn], registry=reg) is col is connector_collector(reg)
    text = generate_latest(reg).decode()
    assert 'connector="ua-test"' not in text and 'connector="mb-test"' in text
