"""Modbus exception responses at run time: a register the device does not have, a read the device refuses
as a whole, a failing device or a wrong unit id. Real Modbus TCP servers (the demo simulator, or a small
pymodbus device that refuses chosen addresses) → connector → mosquitto → subscriber.

What a plant's integration engineer expects: one missing register does not blank the machine's other
signals, the connector does not split its reads again at every poll, a register that appears later (a PLC
program download) is picked up, and the log names the connector, register, machine and signal, says what
the exception code means, and does not repeat itself at every poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import DataType, SimData, SimDevice

from oee_stream.bus import MqttSettings, Sample
from oee_stream.connectors import ModbusConfig, build_connector, parse_connector
from oee_stream.connectors.modbus import ModbusConnector, ReadBlock, plan_reads
from oee_stream.connectors.modbus_codec import describe_exception, encode
from oee_stream.embedded import free_port
from oee_stream.simulators.modbus_server import ModbusSimServer
from oee_stream.simulators.simulate import SimEvent
from tests.test_connectors import Collector as SiteCollector

ROOT = Path(__file__).resolve().parents[1]
LOGGER = "oee_stream.connectors.modbus"
FURNACE = {"state": 2, "total": 12.5, "input": 14.25, "reject": 0.75, "temperature": 731.5, "product": 1}
SIGNALS = ("state", "total", "input", "reject", "product", "temperature")


# ------------------------------------------------------------------------------------------------ pure parts


def test_exception_codes_are_worded_for_the_plant() -> None:
    assert describe_exception(1).startswith("exception 1 illegal function")
    assert describe_exception(2) == ("exception 2 illegal data address (the device has no such register: "
                                     "check address / 0- vs 1-based)")
    assert describe_exception(3).startswith("exception 3 illegal data value")
    assert "server device failure" in describe_exception(4)
    assert "wrong slave_id / unit id behind a gateway" in describe_exception(4)
    assert "busy" in describe_exception(6)
    for code in (10, 11):
        assert "gateway" in describe_exception(code) and "wrong slave_id / unit id" in describe_exception(code)
    assert describe_exception(99).startswith("exception 99 unknown code")


def _regs(*addresses: int, kind: str = "holding") -> list[Any]:
    cfg = parse_connector({"kind": "modbus", "id": "p", "site": "s", "controller": "tcp://h:1",
                           "registers": [{"machine": "m", "signal": f"s{a}", "register": kind, "address": a}
                                         for a in addresses]}, env={})
    assert isinstance(cfg, ModbusConfig)
    return list(cfg.registers)


def _spans(blocks: list[ReadBlock]) -> list[tuple[int, int]]:
    return [(b.start, b.count) for b in blocks]


def test_plan_reads_never_spans_a_cut() -> None:
    regs = _regs(0, 1, 2, 5, 9)
    assert _spans(plan_reads(regs, 8, 125)) == [(0, 10)]
    # a cut at a: no read holds both a-1 and a
    assert _spans(plan_reads(regs, 8, 125, {("holding", 5)})) == [(0, 3), (5, 5)]
    assert _spans(plan_reads(regs, 8, 125, {("holding", 3), ("holding", 7)})) == [(0, 3), (5, 1), (9, 1)]
    assert _spans(plan_reads(regs, 8, 125, {("input", 5)})) == [(0, 10)]  # another kind's cut
    assert _spans(plan_reads(regs, 8, 125, {("holding", 0), ("holding", 10)})) == [(0, 10)]  # at the edges


# ------------------------------------------------------------------------------------------------ helpers


class Collector(SiteCollector):
    """The site's samples as they arrive on the broker, read per signal of furnace-1 by default."""

    def series(self, signal: str, machine: str = "furnace-1") -> list[Sample]:
        self.pump()
        return [s for s in self.samples if s.machine == machine and s.signal == signal]

    def last(self, signal: str, machine: str = "furnace-1") -> Sample | None:
        got = self.series(signal, machine)
        return got[-1] if got else None


def values_ok(c: Collector, signals: tuple[str, ...] = SIGNALS, **over: Any) -> bool:
    want = {**FURNACE, **over}
    for signal in signals:
        s = c.last(signal)
        if s is None or s.quality != "good" or s.value != want[signal]:
            return False
    return True


def is_good(c: Collector, signal: str, value: Any = None) -> bool:
    s = c.last(signal)
    return s is not None and s.quality == "good" and (value is None or s.value == value)


def is_bad(c: Collector, signal: str) -> bool:
    s = c.last(signal)
    return s is not None and s.quality == "bad" and s.value is None


@contextlib.asynccontextmanager
async def running(conn: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(conn.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def warnings_of(caplog: pytest.LogCaptureFixture, since: int = 0) -> list[str]:
    return [r.getMessage() for r in caplog.records[since:] if r.name == LOGGER and r.levelno >= logging.WARNING]


def infos_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]


async def settled(conn: Any, quiet_s: float = 1.0, timeout_s: float = 10.0) -> None:
    """Wait until the connector has polled for `quiet_s` without an exception response."""
    deadline = time.monotonic() + timeout_s
    last, since = conn.stats.extra["exception_responses"], time.monotonic()
    while time.monotonic() - since < quiet_s:
        if time.monotonic() > deadline:
            raise TimeoutError(f"still getting exception responses: {conn.stats.extra}")
        await asyncio.sleep(0.05)
        now = conn.stats.extra["exception_responses"]
        if now != last:
            last, since = now, time.monotonic()


class Device:
    """A pymodbus device with holding registers 0..39 that refuses what a test tells it to:

    `missing` addresses answer exception 2 to any read that covers them (a register the PLC program does
    not have), `max_count` answers exception 3 to longer reads, `failure` answers every read with that code.
    `reads` records every read (start, count) the device was asked for.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.missing: set[int] = set()
        self.max_count = 125
        self.failure: ExcCodes | None = None
        self.reads: list[tuple[int, int]] = []
        self.server: ModbusTcpServer | None = None

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: Any) -> ExcCodes | None:
        if set_values is not None:  # the test's own writes
            return None
        self.reads.append((address, count))
        if self.failure is not None:
            return self.failure
        if any(address <= a < address + count for a in self.missing):
            return ExcCodes.ILLEGAL_ADDRESS
        if count > self.max_count:
            return ExcCodes.ILLEGAL_VALUE
        return None

    async def start(self) -> None:
        dev = SimDevice(1, simdata=[SimData(0, count=40, values=0, datatype=DataType.REGISTERS)],
                        action=self._action)
        self.server = ModbusTcpServer(dev, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)
        await self.set(0, [*encode(FURNACE["state"], "uint16"), *encode(FURNACE["total"], "float32"),
                           *encode(FURNACE["input"], "float32"), *encode(FURNACE["reject"], "float32"),
                           *encode(FURNACE["temperature"], "float32"), *encode(FURNACE["product"], "uint16")])

    async def set(self, address: int, registers: list[int]) -> None:
        assert self.server is not None
        await self.server.async_setValues(1, 16, address, registers)

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
            if ModbusBaseServer.active_server is server:
                ModbusBaseServer.active_server = None


def device_config(site: str, port: int, extra: list[dict[str, Any]] | None = None, **over: Any) -> ModbusConfig:
    """furnace-1 as in connectors/modbus-demo.yaml, all in one group polled every 100 ms."""
    regs = [
        {"machine": "furnace-1", "signal": "state", "address": 0, "type": "uint16"},
        {"machine": "furnace-1", "signal": "total", "address": 1, "type": "float32"},
        {"machine": "furnace-1", "signal": "input", "address": 3, "type": "float32"},
        {"machine": "furnace-1", "signal": "reject", "address": 5, "type": "float32"},
        {"machine": "furnace-1", "signal": "temperature", "address": 7, "type": "float32"},
        {"machine": "furnace-1", "signal": "product", "address": 9, "type": "uint16"},
    ]
    data: dict[str, Any] = {
        "kind": "modbus", "id": "mb-errors", "site": site, "controller": f"tcp://127.0.0.1:{port}",
        "timeout_s": 0.5, "poll_interval_ms": 100, "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5,
        "publish": {"linger_ms": 10}, "registers": regs + (extra or []),
    }
    data.update(over)
    cfg = parse_connector(data, env={})
    assert isinstance(cfg, ModbusConfig)
    return cfg


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    dev = Device(free_port())
    await dev.start()
    try:
        yield dev
    finally:
        await dev.stop()


@pytest.fixture
def collector(mqtt_url: str) -> Iterator[Collector]:
    col = Collector(mqtt_url, f"t{uuid.uuid4().hex[:8]}")
    try:
        yield col
    finally:
        col.close()


# ------------------------------------------------------------------------- the QA finding, on the demo setup


@contextlib.asynccontextmanager
async def demo_furnace() -> AsyncIterator[ModbusSimServer]:
    """The demo's Modbus simulator (furnace-1, unit 1, holding registers 0-9) with FURNACE's values."""
    sim = ModbusSimServer({"furnace-1": 1}, {"furnace-1": {"6063": 1}}, port=free_port())
    await sim.start()
    try:
        await sim.write(SimEvent(time.time(), "furnace-1", {
            "state": FURNACE["state"], "total": FURNACE["total"], "charged": FURNACE["input"],
            "reject": FURNACE["reject"], "temperature": FURNACE["temperature"], "product": "6063"}))
        yield sim
    finally:
        await sim.stop()


def demo_config(site: str, port: int, extra: dict[str, Any] | None = None, slave_id: int = 1) -> ModbusConfig:
    """connectors/modbus-demo.yaml on this site and port, polled faster, with `extra` in group `process`."""
    data = yaml.safe_load((ROOT / "connectors" / "modbus-demo.yaml").read_text())
    data.update(site=site, slave_id=slave_id, timeout_s=0.5, publish={"linger_ms": 10})
    for group in data["groups"]:
        group["poll_interval_ms"] = 100
        if group["name"] == "process" and extra is not None:
            group["registers"].append(extra)
    cfg = parse_connector(data, env={"OEE_SIM_MODBUS_CONTROLLER": f"tcp://127.0.0.1:{port}"})
    assert isinstance(cfg, ModbusConfig)
    return cfg


PRESSURE = {"machine": "furnace-1", "signal": "pressure", "register": "holding", "address": 12, "type": "uint16"}


async def test_a_register_the_device_lacks_blanks_only_its_own_signal(
        mqtt_url: str, collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    """QA's case: holding 12 on a device with 0-9, merged into `holding 0+13`. The other five signals of the
    read keep their values, only `pressure` is bad; the read is split once, not at every poll; one WARNING."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with demo_furnace() as sim:
        cfg = demo_config(collector.site, sim.port, PRESSURE)
        assert _spans(plan_reads(cfg.poll_groups()[0].registers, cfg.max_gap, 125)) == [(0, 13)]
        conn = build_connector(cfg, MqttSettings(mqtt_url))
        assert isinstance(conn, ModbusConnector)
        conn.recheck_first_s = 60.0  # no re-check of holding 12 in this test's few seconds
        async with running(conn):
            await collector.wait(lambda c: values_ok(c) and is_bad(c, "pressure"),
                                 what="furnace values good, pressure bad")
            await settled(conn)
            # still polled: good values and a bad pressure at every poll (the connector's contract: each
            # poll gives every register a sample), with no further exception response
            n_state, n_pressure = len(collector.series("state")), len(collector.series("pressure"))
            responses = conn.stats.extra["exception_responses"]
            await asyncio.sleep(1.0)
            await collector.wait(lambda c: len(c.series("state")) >= n_state + 5
                                 and len(c.series("pressure")) >= n_pressure + 5, what="more polls")
            assert conn.stats.extra["exception_responses"] == responses
            assert values_ok(collector) and is_bad(collector, "pressure")
            assert all(s.quality == "good" for s in collector.series("state"))
            assert conn.stats.reconnects == 0
            assert conn.stats.extra.get("bad_registers") == 1
            # planned around the missing register, as before otherwise
            assert [(b.start, b.count) for p in conn.plans for b in p.blocks] == [(0, 10), (7, 2)]
    warned = warnings_of(caplog)
    assert len(warned) == 1, warned
    msg = warned[0]
    for part in ("connector modbus-demo", "holding 12", "furnace-1/pressure", "exception 2 illegal data address",
                 "the device has no such register: check address / 0- vs 1-based", "holding 0+13"):
        assert part in msg, (part, msg)
    assert conn.stats.last_error is not None and "holding 12" in conn.stats.last_error


async def test_a_wrong_slave_id_is_worded_and_not_logged_at_every_poll(
        mqtt_url: str, collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    """QA's second case: slave_id 5 on a device with unit 1 only. Everything is bad (nothing to split: the
    device as a whole refuses), one WARNING per read naming its signals, then quiet; the link stays up."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with demo_furnace() as sim:
        conn = build_connector(demo_config(collector.site, sim.port, slave_id=5), MqttSettings(mqtt_url))
        async with running(conn):
            await collector.wait(lambda c: all(is_bad(c, s) for s in SIGNALS), what="all signals bad")
            polls = conn.stats.extra["polls"]
            await asyncio.sleep(1.5)
            assert conn.stats.extra["polls"] >= polls + 10  # two groups at 100 ms
            assert all(is_bad(collector, s) for s in SIGNALS)
            assert conn.stats.reconnects == 0
    warned = warnings_of(caplog)
    assert len(warned) == 2, warned  # process's holding 0+10 and slow's holding 7+2, once each
    assert any("holding 0+10 (furnace-1/state, furnace-1/total" in m for m in warned), warned
    for msg in warned:
        assert msg.startswith("connector modbus-demo: holding ")
        assert "server device failure" in msg and "wrong slave_id / unit id behind a gateway" in msg, msg


# ------------------------------------------------------------------------------------- refused, then there


async def test_a_refused_register_is_retried_and_picked_up_when_it_appears(
        mqtt_url: str, device: Device, collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    """A register added later (a PLC program download) is found at a re-check, not at every poll (the
    re-checks back off), and is read with the others again from then on."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    device.missing = {12}
    conn = build_connector(device_config(collector.site, device.port, [PRESSURE]),
                           MqttSettings(mqtt_url))
    assert isinstance(conn, ModbusConnector)
    conn.recheck_first_s, conn.recheck_s = 0.25, 1.0
    async with running(conn):
        await collector.wait(lambda c: values_ok(c) and is_bad(c, "pressure"), what="values, pressure bad")
        n0 = len(device.reads)
        await asyncio.sleep(3.0)
        singles = [r for r in device.reads[n0:] if r == (12, 1)]
        polls = [r for r in device.reads[n0:] if r == (0, 10)]
        assert len(polls) >= 10
        # re-checked after 0.25 s, 0.5 s, then every second: not at every 100 ms poll
        assert 2 <= len(singles) <= 5, device.reads[n0:]
        assert (0, 13) not in device.reads[n0:]

        device.missing.clear()
        await device.set(12, [321])
        await collector.wait(lambda c: is_good(c, "pressure", 321), what="pressure read once it exists")
        assert conn.stats.extra.get("bad_registers") == 0
        await collector.wait(lambda c: values_ok(c), what="the others still good")
        n1 = len(device.reads)
        await asyncio.sleep(0.5)
        assert (0, 13) in device.reads[n1:]  # merged again
    assert any("holding 12 (furnace-1/pressure) reads again" in m for m in infos_of(caplog)), infos_of(caplog)
    assert len(warnings_of(caplog)) == 1, warnings_of(caplog)


async def test_reads_are_planned_around_a_refused_register_in_their_middle(
        mqtt_url: str, device: Device, collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    """holding 12 refused between 9 and 14: the next plan reads 0+10 and 14+1, not 0+15 again (which the
    device would refuse once more and make the connector look for a missing register between them)."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    device.missing = {12}
    flow = {"machine": "furnace-1", "signal": "flow", "address": 14}
    conn = build_connector(device_config(collector.site, device.port, [PRESSURE, flow]),
                           MqttSettings(mqtt_url))
    assert isinstance(conn, ModbusConnector)
    conn.recheck_first_s = 60.0  # no re-check of holding 12 in this test's few seconds
    async with running(conn):
        await collector.wait(lambda c: values_ok(c) and is_bad(c, "pressure") and is_good(c, "flow"),
                             what="values, pressure bad")
        await settled(conn, quiet_s=0.5)
    assert device.reads[0] == (0, 15)
    assert device.reads[-4:] == [(0, 10), (14, 1)] * 2
    # split in halves by register: 0+15 and 7+8 refused, 0+7 and 7+3 read, 12+3 refused, 12+1 refused, 14+1 read
    assert device.reads[:7] == [(0, 15), (0, 7), (7, 8), (7, 3), (12, 3), (12, 1), (14, 1)]
    assert conn.stats.extra["exception_responses"] == 4
    warned = warnings_of(caplog)
    assert len(warned) == 1 and "holding 12 (furnace-1/pressure)" in warned[0], warned


async def test_persisting_refusal_is_reminded_not_repeated(
        mqtt_url: str, device: Device, collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    """While a register stays refused the WARNING comes back every `remind_s`, not at every poll or re-check."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    device.missing = {12}
    conn = build_connector(device_config(collector.site, device.port, [PRESSURE]),
                           MqttSettings(mqtt_url))
    assert isinstance(conn, ModbusConnector)
    conn.recheck_first_s, conn.recheck_s, conn.remind_s = 0.1, 0.2, 1.0
    async with running(conn):
        await collector.wait(lambda c: values_ok(c) and is_bad(c, "pressure"), what="values, pressure bad")
        t0 = time.monotonic()
        await asyncio.sleep(2.6)
        took = time.monotonic() - t0
    warned = warnings_of(caplog)
    reminders = [m for m in warned if "still refused" in m]
    assert 2 <= len(reminders) <= took / conn.remind_s + 1, warned
    assert all("holding 12 (furnace-1/pressure)" in m and "illegal data address" in m for m in reminders)
    assert len(warned) == len(reminders) + 1


# --------------------------------------------------------------------------- a read refused only as a whole


@pytest.mark.parametrize("refusal", ["hole", "too_long"])
async def test_a_read_refused_as_a_whole_is_split_for_good(
        mqtt_url: str, device: Device, collector: Collector, caplog: pytest.LogCaptureFixture, refusal: str) -> None:
    """Every register exists, but the device refuses the merged read: an unused address inside it (`hole`,
    exception 2) or a read longer than it serves (`too_long`, exception 3). All values stay good and the
    connector stops asking for reads it was refused."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    if refusal == "hole":
        device.missing = {11}
    else:
        device.max_count = 6
    extra = [{"machine": "furnace-1", "signal": "pressure", "address": 12}]
    conn = build_connector(device_config(collector.site, device.port, extra),
                           MqttSettings(mqtt_url))
    async with running(conn):
        await collector.wait(lambda c: values_ok(c) and is_good(c, "pressure"), what="all values good")
        await settled(conn)
        n0 = len(device.reads)
        await asyncio.sleep(0.5)
        later = device.reads[n0:]
        assert later and all(not any(a in device.missing for a in range(s, s + n)) and n <= device.max_count
                             for s, n in later), later
        assert values_ok(collector) and all(s.quality == "good" for s in collector.series("state"))
    warned = warnings_of(caplog)
    assert warned and all("though its parts read on their own" in m for m in warned), warned
    code = "exception 2 illegal data address" if refusal == "hole" else "exception 3 illegal data value"
    assert code in warned[0] and "furnace-1/state" in warned[0]


# ---------------------------------------------------------------------------------- device failure and back


async def test_device_failure_is_logged_at_start_reminded_and_recovered(
        mqtt_url: str, device: Device, collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    """Exception 4 is the device's state, not the registers': no splitting, one WARNING, a reminder after
    `remind_s`, an INFO when it reads again, and the values come back at once."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    conn = build_connector(device_config(collector.site, device.port), MqttSettings(mqtt_url))
    assert isinstance(conn, ModbusConnector)
    conn.remind_s = 1.0
    async with running(conn):
        await collector.wait(values_ok, what="values")
        n0 = len(device.reads)
        device.failure = ExcCodes.DEVICE_FAILURE
        t0 = time.monotonic()
        await collector.wait(lambda c: all(is_bad(c, s) for s in SIGNALS), what="all bad")
        await asyncio.sleep(max(0.0, t0 + 2.5 - time.monotonic()))
        failing_s = time.monotonic() - t0
        failed_reads = device.reads[n0:]
        device.failure = None
        await collector.wait(lambda c: values_ok(c), what="values again")
        assert conn.stats.reconnects == 0
    assert set(failed_reads) == {(0, 10)} and len(failed_reads) >= 10  # polled on, never split
    warned = warnings_of(caplog)
    # a line when it starts, then a reminder about once a second (remind_s), not a line per poll
    assert 1 <= len(warned[1:]) <= failing_s / conn.remind_s, warned
    assert warned[0].startswith("connector mb-errors: holding 0+10 (furnace-1/state, furnace-1/total")
    assert "exception 4 server device failure" in warned[0] and "wrong slave_id" in warned[0]
    assert all("exception 4" in m and "; still, " in m for m in warned[1:]), warned
    assert any("holding 0+10 reads again (exception 4 server device failure" in m for m in infos_of(caplog))
