"""The engine's named MQTT session (OEE_MQTT_SESSION): the broker queues what the connectors send while the
engine is stopped and delivers it when the engine is back, so a restart of the service loses nothing. Without
a session (a clean one) those messages are gone, which is what the test shows first.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from oee_stream import bus
from oee_stream.bus import BusClient, MqttSettings, Sample
from oee_stream.service import EngineService
from tests.engine_fixtures import plant


async def _run_until_ready(svc: EngineService) -> asyncio.Task[None]:
    task = asyncio.create_task(svc.run())
    async with asyncio.timeout(20):
        await svc.ready.wait()
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task}, timeout=10)
    assert task.done()


async def _send_while_away(url: str, t: float, n: int) -> None:
    async with BusClient(MqttSettings(url=url)) as pub:
        await pub.wait_connected(10)
        for i in range(n):
            body = bus.encode_batch("c1", [Sample("m1", "total", t + i, float(i))])
            await pub.publish_and_wait(bus.batch_topic("site", "m1"), body, timeout=10)


async def _accepted_within(svc: EngineService, n: int, seconds: float) -> int:
    for _ in range(int(seconds / 0.05)):
        if svc.engine.stats.accepted >= n:
            break
        await asyncio.sleep(0.05)
    return svc.engine.stats.accepted


def _discard_session(url: str, client_id: str) -> None:
    """Connect once with a clean session under the same id: the broker forgets the queue (no test leaves one
    behind on a shared broker)."""
    s = MqttSettings(url=url)
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.connect(s.host, s.port)
    c.disconnect()


async def test_a_named_session_gets_what_was_sent_while_the_engine_was_stopped(mqtt_url: str) -> None:
    now = time.time()
    settings = MqttSettings(url=mqtt_url)
    # a clean session: what is sent while the engine is stopped never reaches it
    cold = EngineService(plant(), settings, None)
    await _stop(await _run_until_ready(cold))
    await _send_while_away(mqtt_url, now - 100, 20)
    cold = EngineService(plant(), settings, None)
    task = await _run_until_ready(cold)
    assert await _accepted_within(cold, 1, 1.5) == 0
    await _stop(task)

    session = f"oee-test-engine-{uuid.uuid4().hex[:8]}"
    try:
        first = EngineService(plant(), settings, None, session=session)
        await _stop(await _run_until_ready(first))
        await _send_while_away(mqtt_url, now - 50, 20)
        again = EngineService(plant(), settings, None, session=session)
        task = await _run_until_ready(again)
        assert await _accepted_within(again, 20, 10) == 20
        await _stop(task)
    finally:
        await asyncio.to_thread(_discard_session, mqtt_url, session)


@pytest.mark.parametrize("session", [None, "named"])
def test_the_session_is_the_client_id_and_turns_clean_session_off(session: str | None) -> None:
    c = BusClient(MqttSettings(), session=session)
    assert (c._client._client_id == b"named") is (session is not None)
    assert c._client._clean_session is (session is None)
