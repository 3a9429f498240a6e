"""Record the live bus to a JSON-lines file and recompute KPIs from it through the same engine code."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from oee_stream import bus
from oee_stream.config import Plant
from oee_stream.engine import Engine, KpiResult
from oee_stream.service import apply_messages


async def record_bus(plant: Plant, mqtt_url: str, output: Path, seconds: float | None) -> int:
    """Append every sample and status message of the plant's site to `output` until stopped."""
    client = bus.BusClient(bus.MqttSettings(url=mqtt_url), subscriptions=[f"{bus.PREFIX}/{plant.site.id}/+/+"])
    n = 0
    deadline = None if seconds is None else time.monotonic() + seconds
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("ab") as f:
        async with client:
            await client.wait_connected(timeout=30)
            while deadline is None or time.monotonic() < deadline:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    msg = await asyncio.wait_for(client.get(), timeout=timeout)
                except TimeoutError:
                    break
                f.write(orjson.dumps({"t": time.time(), "topic": msg.topic,
                                      "payload": msg.payload.decode("utf-8", "replace")}) + b"\n")
                n += 1
    return n


def replay_file(plant: Plant, path: Path, *, at: float | None = None) -> list[KpiResult]:
    """Feed a recording to a fresh engine in its recorded order and receive times; evaluate at `at`."""
    engine = Engine(plant)
    last_t = 0.0
    batch: list[bus.Message] = []
    batch_t: float | None = None
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            rec = orjson.loads(line)
            t = float(rec["t"])
            if at is not None and t > at:
                break
            if batch_t is not None and t != batch_t:
                apply_messages(engine, batch, batch_t)
                batch = []
            batch_t = t
            batch.append(bus.Message(rec["topic"], rec["payload"].encode("utf-8")))
            last_t = t
    if batch and batch_t is not None:
        apply_messages(engine, batch, batch_t)
    return engine.results(at if at is not None else last_t)


def format_table(results: list[KpiResult]) -> str:
    def pct(x: float | None) -> str:
        return "   -  " if x is None else f"{x * 100:6.2f}"

    head = f"{'entity':<14} {'window':<6} {'start (UTC)':<20} {'A %':>6} {'P %':>6} {'Q %':>6} {'OEE %':>6} " \
           f"{'cov %':>6} {'total':>9} {'reject':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.entity:<14} {r.window:<6} {r.to_json()['start'][:19]:<20} {pct(r.availability)} "
                     f"{pct(r.performance)} {pct(r.quality)} {pct(r.oee)} {pct(r.coverage)} "
                     f"{r.total:>9.2f} {r.reject:>8.2f}")
    return "\n".join(lines)
