"""A cancelled connector ends, promptly, whatever it was doing, and leaves no PLC link and no MQTT thread.

A fresh-clone `make test` once hung for 20 minutes in the board test: the service waited for a connector that
did not end after its cancellation. The cause: on Python 3.11 `asyncio.wait_for` returns the awaited result,
swallowing the cancellation, when the task is cancelled in the same loop iteration in which the awaited
operation completes (CPython gh-86296); the connector's poll or watchdog loop then went on for ever, with its
links to the simulator and its paho thread. The races are forced here deterministically (a read schedules the
cancellation as it hands back its result), next to cancellations in the other phases of a connector's life:
connecting, polling a silent PLC, reconnect backoff, an unreachable broker. Against the code before the fix the
three `*_just_as_*` tests fail every time.

The connectors are the demo's (connectors/*.yaml) against the demo simulator, as `running_service` runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from asyncua.common.node import Node
from asyncua.ua.object_ids import ObjectIds

from oee_stream.bus import BusClient, MqttSettings
from oee_stream.config import load_plant
from oee_stream.connectors import build_connector, load_connectors
from oee_stream.embedded import free_port
from oee_stream.runtime import waiting_at
from oee_stream.simulators.runner import PlantSimulator, run_plant_simulator

ROOT = Path(__file__).resolve().parents[1]
STOP_S = 5.0  # a cancelled connector must end within this (a hang is for ever; stopping takes milliseconds)


# ------------------------------------------------------------------------------------------------ helpers


@contextlib.asynccontextmanager
async def demo_simulator() -> AsyncIterator[PlantSimulator]:
    plant = load_plant(ROOT / "deploy" / "demo" / "plant.yaml")
    async with run_plant_simulator(ROOT / "simulators" / "demo.yaml", plant, opcua_port=free_port(),
                                   modbus_port=free_port(), seed=7) as sim:
        yield sim


def demo_configs(opcua_endpoint: str, modbus_port: int, **over: dict[str, Any]) -> dict[str, Any]:
    """The demo's connector configs ({kind: config}) pointed at these addresses, with `over[kind]` fields."""
    env = {"OEE_SIM_OPCUA_ENDPOINT": opcua_endpoint, "OEE_SIM_MODBUS_CONTROLLER": f"tcp://127.0.0.1:{modbus_port}"}
    return {c.kind: c.model_copy(update=over.get(c.kind, {})) for c in load_connectors(ROOT / "connectors", env=env)}


def sim_addresses(sim: PlantSimulator) -> tuple[str, int]:
    assert sim.opcua_endpoint is not None and sim.modbus_address is not None
    return sim.opcua_endpoint, sim.modbus_address[1]


def links_to(port: int) -> list[Any]:
    """Our TCP connections to `port` (client side), in any state but closed."""
    return [c for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port == port and c.status != psutil.CONN_CLOSE]


def paho_threads(conn: Any) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == f"paho-mqtt-client-oee-conn-{conn.id}" and t.is_alive()]


def port_of(endpoint: str) -> int:
    return int(endpoint.split(":")[2].split("/")[0])


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel completes the handshake) and never answers."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        yield srv.getsockname()[1]


async def wait_until(pred: Callable[[], Any], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.02)


class Running:
    """A connector run in a task as the service runs it; `stop()` cancels it and checks it ended clean."""

    def __init__(self, conn: Any, before: set[asyncio.Task[Any]] | None = None) -> None:
        self.conn = conn
        self.before = asyncio.all_tasks() if before is None else before
        self.task = asyncio.create_task(conn.run(), name=f"connector-{conn.id}")

    async def stop(self, *, ports: tuple[int, ...] = ()) -> float:
        """Cancel the connector (once: not again if that was done) and return how long it took to end; fails if
        it did not end within STOP_S or left a link to one of `ports`, its MQTT thread or a task behind."""
        t0 = time.monotonic()
        if not self.task.done() and not self.task.cancelling():
            self.task.cancel()
        done, _ = await asyncio.wait({self.task}, timeout=STOP_S)
        took = time.monotonic() - t0
        assert done, (f"connector {self.conn.id} did not end within {STOP_S}s of its cancellation; "
                      f"it waits at {waiting_at(self.task)}")
        assert self.task.cancelled(), f"connector {self.conn.id} ended with {self.task.exception()!r}, not cancelled"
        await assert_clean([self], ports)
        return took

    async def kill(self) -> None:
        """After a failed test: end a connector that ignored its cancellation (a second cancel gets through)."""
        for _ in range(5):
            if self.task.done():
                break
            self.task.cancel()
            for t in asyncio.all_tasks():
                if t.get_name().startswith(f"{self.conn.id}-"):  # the Modbus poll loops
                    t.cancel()
            await asyncio.wait({self.task}, timeout=2)


async def assert_clean(runs: list[Running], ports: tuple[int, ...]) -> None:
    """No link to `ports`, no paho thread of these connectors, no task they started is left."""
    # A closed socket is released on the loop's next iterations: give it a moment.
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: not any(links_to(p) for p in ports)
                         and not any(paho_threads(r.conn) for r in runs), 2.0)
    for p in ports:
        assert not links_to(p), f"a link to port {p} was left open: {links_to(p)}"
    for r in runs:
        assert not paho_threads(r.conn), f"connector {r.conn.id} left paho's network thread running"
    before = set.intersection(*(r.before for r in runs))
    left = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()
            and "/server/" not in t.get_coro().cr_code.co_filename]  # type: ignore[union-attr]
    assert not left, f"tasks left running after the connectors ended: {left}"


@contextlib.asynccontextmanager
async def running(conn: Any) -> AsyncIterator[Running]:
    run = Running(conn)
    try:
        yield run
    finally:
        await run.kill()


# ------------------------------------------------------------------------------- cancelled as a read completes


async def test_modbus_cancelled_just_as_a_read_completes(mqtt_url: str) -> None:
    """The Modbus connector is cancelled just as a register read completes: the poll loop must not carry on
    with the response (3.11's wait_for hands it back and drops the cancellation)."""
    async with demo_simulator() as sim:
        endpoint, mb_port = sim_addresses(sim)
        conn = build_connector(demo_configs(endpoint, mb_port)["modbus"], MqttSettings(mqtt_url))
        read = conn._read  # type: ignore[attr-defined]
        cancelled_at: list[float] = []
        armed = False

        async def read_then_cancelled(client: Any, block: Any) -> Any:
            nonlocal armed
            resp = await read(client, block)
            if armed:
                armed = False
                # cancelled from outside on the loop's next iteration, as the response is handed back: the
                # race, every time
                asyncio.get_running_loop().call_soon(run.task.cancel)
                cancelled_at.append(time.monotonic())
            return resp

        conn._read = read_then_cancelled  # type: ignore[attr-defined]
        async with running(conn) as run:
            await wait_until(lambda: conn.stats.samples_published > 0 and conn.stats.source_connected,
                             what="the connector polling and publishing")
            armed = True
            await wait_until(lambda: cancelled_at, what="the next read")
            took = await run.stop(ports=(mb_port,))
        assert took < STOP_S


async def test_opcua_cancelled_just_as_the_watchdog_read_completes(mqtt_url: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The OPC UA connector is cancelled just as its watchdog's read of the server state completes."""
    read_value = Node.read_value
    cancel: list[asyncio.Task[None]] = []
    state = ObjectIds.Server_ServerStatus_State

    async def read_then_cancelled(self: Node, *args: Any, **kwargs: Any) -> Any:
        value = await read_value(self, *args, **kwargs)
        if cancel and self.nodeid.Identifier == state and self.nodeid.NamespaceIndex == 0:
            asyncio.get_running_loop().call_soon(cancel.pop().cancel)  # as the value is handed back
        return value

    monkeypatch.setattr(Node, "read_value", read_then_cancelled)
    async with demo_simulator() as sim:
        endpoint, mb_port = sim_addresses(sim)
        cfg = demo_configs(endpoint, mb_port, opcua={"watchdog_interval_s": 0.2})["opcua"]
        conn = build_connector(cfg, MqttSettings(mqtt_url))
        make_client = conn._make_client  # type: ignore[attr-defined]

        async def quiet_client() -> Any:
            client = await make_client()
            # asyncua's own health probe reads the same node; keep it out of the way, only our watchdog reads
            client._watchdog_intervall = 3600.0
            return client

        conn._make_client = quiet_client  # type: ignore[attr-defined]
        async with running(conn) as run:
            await wait_until(lambda: conn.stats.samples_published > 0 and conn.stats.source_connected,
                             what="the connector subscribed and publishing")
            cancel.append(run.task)
            await wait_until(lambda: not cancel, what="the next watchdog read")
            await run.stop(ports=(port_of(endpoint),))


async def test_bus_wait_connected_cancelled_just_as_the_connection_comes_up() -> None:
    """The publisher waits for the broker with `wait_connected`; cancelled as the connection comes up, the
    waiting task must end cancelled (3.11's wait_for returns normally instead)."""
    bus = BusClient(MqttSettings(f"mqtt://127.0.0.1:{free_port()}"))
    async with bus:
        waiter = asyncio.create_task(bus.wait_connected(timeout=30))
        await asyncio.sleep(0.05)
        bus._connected.set()  # what paho's thread does on CONNACK (via call_soon_threadsafe)
        waiter.cancel()
        await asyncio.wait({waiter}, timeout=STOP_S)
        assert waiter.cancelled(), "wait_connected swallowed its cancellation"


# ------------------------------------------------------------------------------- the other phases


async def test_cancelled_while_connected_at_random_moments(mqtt_url: str) -> None:
    """Both demo connectors, cancelled at moments spread over connecting, subscribing, polling and publishing."""
    async with demo_simulator() as sim:
        endpoint, mb_port = sim_addresses(sim)
        cfgs = demo_configs(endpoint, mb_port, opcua={"watchdog_interval_s": 0.05})
        mb = cfgs["modbus"]
        cfgs["modbus"] = mb.model_copy(update={"groups": [g.model_copy(update={"poll_interval_ms": 20})
                                                          for g in mb.groups]})
        rng = random.Random(7)
        for delay in [0.0, 0.01, 0.05, *(rng.uniform(0.05, 1.5) for _ in range(6))]:
            before = asyncio.all_tasks()
            runs = [Running(build_connector(c, MqttSettings(mqtt_url)), before) for c in cfgs.values()]
            try:
                await asyncio.sleep(delay)
                for r in runs:
                    r.task.cancel()
                done, _ = await asyncio.wait({r.task for r in runs}, timeout=STOP_S)
                for r in runs:
                    assert r.task in done, (f"after {delay:.2f}s: connector {r.conn.id} did not end within "
                                            f"{STOP_S}s of its cancellation; it waits at {waiting_at(r.task)}")
                    assert r.task.cancelled(), r.task.exception()
                await assert_clean(runs, (port_of(endpoint), mb_port))
            finally:
                for r in runs:
                    await r.kill()


async def test_cancelled_in_reconnect_backoff(mqtt_url: str) -> None:
    """Nothing listens at the PLC addresses: both connectors publish bad samples and wait to retry (30 s)."""
    dead_ua, dead_mb = free_port(), free_port()
    cfgs = demo_configs(f"opc.tcp://127.0.0.1:{dead_ua}/oee-stream/sim/", dead_mb,
                        opcua={"reconnect_initial_s": 30.0, "reconnect_max_s": 30.0},
                        modbus={"reconnect_initial_s": 30.0, "reconnect_max_s": 30.0})
    for cfg in cfgs.values():
        conn = build_connector(cfg, MqttSettings(mqtt_url))
        async with running(conn) as run:
            await wait_until(lambda c=conn: c.stats.source_errors >= 1 and c.stats.samples_published > 0,
                             what=f"{conn.id}: a failed connection and its bad samples published")
            assert not conn.stats.source_connected
            await asyncio.sleep(0.3)  # in the backoff now
            assert await run.stop(ports=(dead_ua, dead_mb)) < STOP_S


async def test_cancelled_while_the_plc_does_not_answer(mqtt_url: str) -> None:
    """The PLC accepts the TCP connection and never answers: OPC UA hangs in its handshake, Modbus in a read.
    Cancelled there, the connectors end at once and close the connection."""
    with silent_listener() as port:
        cfgs = demo_configs(f"opc.tcp://127.0.0.1:{port}/oee-stream/sim/", port,
                            opcua={"timeout_s": 10.0}, modbus={"timeout_s": 10.0})
        for cfg in cfgs.values():
            conn = build_connector(cfg, MqttSettings(mqtt_url))
            async with running(conn) as run:
                await wait_until(lambda: links_to(port), what=f"{conn.id}: connected to the silent PLC")
                await asyncio.sleep(0.5)  # waiting for an answer now (it would time out after 10 s)
                assert not run.task.done()
                assert await run.stop(ports=(port,)) < STOP_S


async def test_cancelled_while_the_broker_is_unreachable() -> None:
    """The connectors read the PLC and buffer while nothing listens at the broker's address: they wait for the
    broker (paho retries in its thread). Cancelled, they end and paho's thread stops."""
    broker = MqttSettings(f"mqtt://127.0.0.1:{free_port()}")
    async with demo_simulator() as sim:
        endpoint, mb_port = sim_addresses(sim)
        for cfg in demo_configs(endpoint, mb_port).values():
            conn = build_connector(cfg, broker)
            async with running(conn) as run:
                await wait_until(lambda c=conn: c.stats.buffered > 0 and c.stats.source_connected,
                                 what=f"{conn.id}: samples buffered for the broker")
                assert paho_threads(conn) and not conn.stats.broker_connected
                await asyncio.sleep(1.2)  # past paho's first reconnect wait
                assert await run.stop(ports=(port_of(endpoint), mb_port)) < STOP_S
