"""`oee-stream connectors` on an edge box: what its journal says about the MQTT broker (connected, refused,
lost, back, how many samples wait), and a spool that cannot be opened as one error line, not a traceback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from oee_stream import bus, edge
from oee_stream.bus import BusClient, MqttSettings
from oee_stream.connectors.spool import DiskSpool
from oee_stream.embedded import free_port
from oee_stream.settings import Settings
from tests.harness import MosquittoBroker, find_mosquitto

REPO = Path(__file__).resolve().parents[1]
PLANT = REPO / "deploy" / "demo" / "plant.yaml"
CONNECTORS = REPO / "connectors"

Events = list[MutableMapping[str, Any]]


def named(logs: Events, *names: str) -> Events:
    return [e for e in logs if e["event"] in names]


async def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Mosquittos of this test only (stopped and started, or configured differently from the session's)."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("needs the mosquitto binary")
    started: list[MosquittoBroker] = []

    def make(extra_config: str = "", port: int | None = None) -> MosquittoBroker:
        workdir = tmp_path / f"mqtt{len(started)}"
        workdir.mkdir()
        b = MosquittoBroker(binary, port=port, workdir=workdir)
        if extra_config:
            b.config.write_text(b.config.read_text().replace("allow_anonymous true\n", extra_config))
        started.append(b)
        return b

    yield make
    for b in started:
        b.close()


# ------------------------------------------------------------------------------------------ the bus client


async def test_nothing_listening_is_logged_once_not_per_attempt() -> None:
    port = free_port()
    client = BusClient(MqttSettings(url=f"mqtt://127.0.0.1:{port}", client_id="edge-test"))
    client._client.reconnect_delay_set(1, 1)  # paho's 1-10 s, shortened
    with capture_logs() as logs:
        async with client:
            await wait_for(lambda: client._failures >= 3, 15, "three connection attempts")
    assert named(logs, "mqtt_connect_failed", "mqtt_reconnecting", "mqtt_connected") == [
        {"event": "mqtt_connect_failed", "log_level": "warning", "broker": f"127.0.0.1:{port}",
         "client": "edge-test", "reason": "connection refused", "retrying": "every 1-10 s"}]


async def test_a_refused_login_says_not_authorised(private_broker: Callable[..., MosquittoBroker]) -> None:
    broker = private_broker("allow_anonymous false\n")
    broker.start()
    client = BusClient(MqttSettings(url=broker.url, username="edge", password="wrong"))
    with capture_logs() as logs:
        async with client:
            await wait_for(lambda: bool(named(logs, "mqtt_connect_failed")), 10, "a refusal")
            await asyncio.sleep(1.5)  # paho retries after 1 s: the same reason is not logged again
    (failed,) = named(logs, "mqtt_connect_failed", "mqtt_reconnecting", "mqtt_connected", "mqtt_disconnected")
    assert failed["reason"].startswith("refused: not authorised")
    assert client._failures >= 2


async def test_a_lost_broker_is_logged_with_its_reason_and_its_return(
        private_broker: Callable[..., MosquittoBroker], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus, "RECONNECT_LOG_EVERY_S", 1.5)
    broker = private_broker("")
    broker.start()
    client = BusClient(MqttSettings(url=broker.url))
    client._client.reconnect_delay_set(1, 1)
    with capture_logs() as logs:
        async with client:
            await client.wait_connected(10)
            broker.stop()
            await wait_for(lambda: client._failures >= 4, 20, "reconnection attempts")
            broker.start()
            await client.wait_connected(20)
    events = named(logs, "mqtt_connected", "mqtt_disconnected", "mqtt_connect_failed", "mqtt_reconnecting")
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["mqtt_connected", "mqtt_disconnected", "mqtt_connect_failed"], events
    assert events[1]["reason"] == "connection lost" and events[1]["broker"] == f"127.0.0.1:{broker.port}"
    assert events[2]["reason"] == "connection refused"
    back = events[-1]
    assert back["event"] == "mqtt_connected" and back["down_s"] > 0 and back["attempts"] >= 4
    # still away: said again, but not once per attempt (at most every 1.5 s here, an attempt every 1 s)
    assert 1 <= kinds.count("mqtt_reconnecting") < back["attempts"] - 1


# ------------------------------------------------------------------------------------------ the edge process


@pytest.fixture
def edge_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The demo's connector files pointed at PLC addresses where nothing listens (their samples are bad
    quality, but there are samples), and a broker URL where nothing listens yet."""
    monkeypatch.setenv("OEE_SIM_OPCUA_ENDPOINT", f"opc.tcp://127.0.0.1:{free_port()}/oee-stream/sim/")
    monkeypatch.setenv("OEE_SIM_MODBUS_CONTROLLER", f"tcp://127.0.0.1:{free_port()}")
    return Settings(plant=PLANT, connectors=CONNECTORS, data_dir=tmp_path / "var",
                    mqtt_url=f"mqtt://127.0.0.1:{free_port()}")


async def test_connectors_log_the_broker_and_the_waiting_samples(
        edge_env: Settings, private_broker: Callable[..., MosquittoBroker], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge, "BUFFER_POLL_S", 0.1)
    assert edge_env.mqtt_url is not None
    port = int(edge_env.mqtt_url.rsplit(":", 1)[1])
    stop = asyncio.Event()
    with capture_logs() as logs:
        run = asyncio.create_task(edge.run_connectors(edge_env, stop))
        await wait_for(lambda: len(named(logs, "connector_buffering")) == 2, 20, "both connectors buffering")
        private_broker("", port).start()
        await wait_for(lambda: len(named(logs, "connector_buffer_sent")) == 2, 30, "the samples sent")
        stop.set()
        await run
    (started,) = named(logs, "connectors_started")
    assert started["broker"] == f"127.0.0.1:{port}"
    failed = named(logs, "mqtt_connect_failed")
    assert {e["client"] for e in failed} == {"oee-conn-modbus-demo", "oee-conn-opcua-demo"}
    assert {e["reason"] for e in failed} == {"connection refused"}
    buffering = named(logs, "connector_buffering")
    assert {e["connector"] for e in buffering} == {"modbus-demo", "opcua-demo"}
    assert all(e["samples"] > 0 and e["broker_connected"] is False for e in buffering)
    assert len(named(logs, "mqtt_connected")) == 2


async def test_a_spool_in_use_ends_the_run_with_one_error(edge_env: Settings) -> None:
    from oee_stream.connectors import SpoolError

    held = DiskSpool(edge_env.data_dir / "spool" / "opcua-demo")  # as a second process on this data dir would
    try:
        with capture_logs() as logs, pytest.raises(SpoolError) as ei:
            await asyncio.wait_for(edge.run_connectors(edge_env), 30)
    finally:
        held.close()
    assert str(ei.value) == (
        f"connector 'opcua-demo': spool {edge_env.data_dir / 'spool' / 'opcua-demo'} is in use by another process "
        "(two connectors with the same id, or the same spool_dir?); is another `oee-stream connectors` or `run` "
        f"with OEE_DATA_DIR={edge_env.data_dir} running?")
    assert ei.value.__cause__ is None and ei.value.__suppress_context__
    assert named(logs, "connector_failed") == []  # the CLI prints it once
