"""Record the live bus to a JSON-lines file and recompute KPIs from it through the same engine code.

A recording line is `{"t": receive time, "topic": ..., "payload": text}`. That envelope is this module's
own file format, so a line that is not one means the file is not a recording (or was edited): that is an
error naming the line. What is inside the envelope is telemetry as the engine received it, so a malformed
payload is dead-lettered and counted exactly as the live engine did, and replay reports the count.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from oee_stream import bus
from oee_stream.config import Plant
from oee_stream.engine import Engine, KpiResult
from oee_stream.service import apply_messages


class RecordingError(Exception):
    """A recording that cannot be made or replayed; the message names the file (and line) and the cause."""


async def record_bus(plant: Plant, mqtt_url: str, output: Path, seconds: float | None,
                     *, connect_timeout: float = 30.0) -> int:
    """Append every sample and status message of the plant's site to `output` until `seconds` have passed
    or SIGINT/SIGTERM; returns the number of messages recorded."""
    client = bus.BusClient(bus.MqttSettings(url=mqtt_url), subscriptions=[f"{bus.PREFIX}/{plant.site.id}/+/+"])
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        f = output.open("ab")
    except OSError as exc:
        raise RecordingError(f"{output}: cannot write ({exc.strerror or exc})") from exc
    n = 0

    async def pump() -> None:
        nonlocal n
        try:
            await client.wait_connected(timeout=connect_timeout)
        except TimeoutError:
            raise RecordingError(f"no MQTT broker answered at {mqtt_url} within {connect_timeout:g} s") from None
        # The recording time starts once connected: a slow connect must not eat the requested duration.
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel on 3.11
                    msg = await client.get()
            except TimeoutError:
                break
            f.write(orjson.dumps({"t": time.time(), "topic": msg.topic,
                                  "payload": msg.payload.decode("utf-8", "replace")}) + b"\n")
            n += 1

    with f:
        async with client:
            # Ctrl-C is how a recording without --seconds ends: a normal stop, not an abort.
            task = asyncio.create_task(pump())
            stopped = False

            def stop() -> None:
                nonlocal stopped
                stopped = True
                task.cancel()

            loop = asyncio.get_running_loop()
            signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
            try:
                for sig in signals:
                    loop.add_signal_handler(sig, stop)
            except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
                signals = ()
            try:
                await task
            except asyncio.CancelledError:
                if not stopped:
                    raise
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)
    return n


@dataclass
class Replay:
    results: list[KpiResult]
    messages: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)  # reason -> count, as the live engine had them
    late_dropped: int = 0
    skipped_tail: int | None = None  # line number of an incomplete last line that was left out


def _envelope(line: bytes) -> tuple[float, str, str]:
    """The receive time, topic and payload of one recording line; ValueError with a short reason."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    t = rec.get("t")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise ValueError(f"'t' must be the receive time in epoch seconds, got {t!r}"[:120])
    topic, payload = rec.get("topic"), rec.get("payload")
    if not isinstance(topic, str):
        raise ValueError("'topic' must be a string" if "topic" in rec else "no 'topic'")
    if not isinstance(payload, str):
        raise ValueError("'payload' must be a string" if "payload" in rec else "no 'payload'")
    return float(t), topic, payload


def replay_log(plant: Plant, path: Path, *, at: float | None = None) -> Replay:
    """Feed a recording to a fresh engine in its recorded order and receive times; evaluate at `at`.

    Raises RecordingError for a missing or unreadable file, a line that is not a recording line, and a file
    without messages. An incomplete last line after good ones is left out (`skipped_tail`): a recorder
    killed mid-write leaves one, and the rest of the recording is still good.
    """
    engine = Engine(plant)
    out = Replay(results=[])
    last_t = 0.0
    batch: list[bus.Message] = []
    batch_t: float | None = None

    def flush() -> None:
        assert batch_t is not None
        applied = apply_messages(engine, batch, batch_t)
        out.dead_letters.update(reason for _topic, _payload, reason in applied.dead)
        out.late_dropped += len(applied.late)

    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise RecordingError(f"{path}: no such file") from None
    except OSError as exc:  # a directory, no permission
        raise RecordingError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    lines = 0
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            lines += 1
            try:
                t, topic, payload = _envelope(line)
            except ValueError as exc:
                # Only the last line can lack its newline; after good lines it is a write cut short.
                if not line.endswith(b"\n") and out.messages:
                    out.skipped_tail = lineno
                    break
                raise RecordingError(f"{path}:{lineno}: not a recorded bus message ({exc})") from None
            if at is not None and t > at:
                break
            if batch_t is not None and t != batch_t:
                flush()
                batch = []
            batch_t = t
            batch.append(bus.Message(topic, payload.encode("utf-8")))
            out.messages += 1
            last_t = t
    if lines == 0:
        raise RecordingError(f"{path}: no bus messages")
    if batch and batch_t is not None:
        flush()
    out.results = engine.results(at if at is not None else last_t)
    return out


def replay_file(plant: Plant, path: Path, *, at: float | None = None) -> list[KpiResult]:
    """The results of `replay_log`."""
    return replay_log(plant, path, at=at).results


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
