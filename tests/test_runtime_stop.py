"""Stopping the service's components: bounded, and a component that does not end is named."""

from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from oee_stream.runtime import wait_stopped


async def test_a_component_that_ignores_cancellation_is_named_not_waited_for() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(30)  # swallows the cancellation and keeps waiting

    async def failing() -> None:
        raise RuntimeError("broke earlier")

    async def polite() -> None:
        await asyncio.sleep(30)

    tasks = [asyncio.create_task(stubborn(), name="connector-x"), asyncio.create_task(polite(), name="engine"),
             asyncio.create_task(failing(), name="retention")]
    await asyncio.sleep(0)
    for t in tasks:
        t.cancel()
    t0 = time.monotonic()
    with capture_logs() as logs:
        left = await wait_stopped(tasks, timeout=0.3)
    assert left == ["connector-x"]
    assert time.monotonic() - t0 < 5
    [event] = [e for e in logs if e["event"] == "component_did_not_stop"]
    assert event["component"] == "connector-x" and "stubborn" in event["waiting_at"]
    assert await wait_stopped([], timeout=0.1) == []
    tasks[0].cancel()
    await asyncio.gather(tasks[0], return_exceptions=True)
