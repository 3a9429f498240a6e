"""The engine service writes only what changed: new windows, windows whose numbers changed, new or
changed state intervals; late data re-emits the windows it changes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY

from oee_stream import bus
from oee_stream.bus import Sample
from oee_stream.engine import KpiResult
from oee_stream.service import EngineService
from oee_stream.storage.writer import StateInterval
from tests.engine_fixtures import plant

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC).timestamp()


class FakeWriter:
    retries = 0
    dropped_rows = 0
    buffered_rows = 0

    def __init__(self) -> None:
        self.results: list[list[KpiResult]] = []
        self.intervals: list[list[StateInterval]] = []
        self.deleted: list[tuple[str, float]] = []

    async def write_results(self, results: Any) -> None:
        self.results.append(list(results))

    async def write_state_intervals(self, intervals: Any) -> None:
        self.intervals.append(list(intervals))

    async def delete_state_intervals(self, keys: Any) -> None:
        self.deleted += list(keys)

    async def operator_reasons(self, since: float) -> list[tuple[str, float, float | None, str]]:
        return []  # no operator has coded anything (tests/test_operator_reasons.py covers the real store)


def _service(clock: list[float]) -> tuple[EngineService, FakeWriter]:
    w = FakeWriter()
    svc = EngineService(plant(policies={"allowed_lateness_s": 3600}), bus.MqttSettings(), w,  # type: ignore[arg-type]
                        clock=lambda: clock[0])
    return svc, w


async def test_only_changed_results_and_intervals_are_written() -> None:
    clock = [T0 + 5400.0]
    svc, w = _service(clock)
    eng = svc.engine
    eng.ingest([Sample("m1", "state", T0, 1), Sample("m1", "total", T0, 0), Sample("m1", "total", T0 + 3000, 900),
                Sample("m1", "state", T0 + 3600, 0)], now=clock[0])
    first = await svc.tick()
    assert len(w.results[-1]) == len(first)  # everything is new
    assert {(i.start, i.end) for i in w.intervals[-1] if i.time_class != "unknown"} == \
        {(T0, T0 + 3600), (T0 + 3600, None)}
    clock[0] += 1.0
    second = await svc.tick()
    written = w.results[-1]
    # windows that slide or grow with now changed; the hour 06:00-07:00, closed and unchanged, did not
    closed = [r for r in second if r.window == "hour" and r.end <= T0 + 3600]
    assert closed and not any(r.window == "hour" and r.end <= T0 + 3600 for r in written)
    assert len(written) < len(second)
    assert len(w.intervals) == 1  # the open stop is still the same interval: nothing to write
    # a stop reported late inside the closed hour changes it: written again, and so is the interval
    rederived = REGISTRY.get_sample_value("oee_engine_rederived_machines_total") or 0.0
    eng.ingest([Sample("m1", "state", T0 + 1800, 0)], now=clock[0])
    clock[0] += 1.0
    await svc.tick()
    assert REGISTRY.get_sample_value("oee_engine_rederived_machines_total") == rederived + 1
    again = [r for r in w.results[-1] if r.window == "hour" and r.start == T0 and r.entity == "m1"]
    assert again and again[0].seconds["unplanned_stop"] == 1800
    assert {(i.start, i.end) for i in w.intervals[-1]} == {(T0, T0 + 1800), (T0 + 1800, None)}
    # the stop that was open from 07:00 no longer exists: it is deleted, not left open for ever
    assert w.deleted == [("m1", T0 + 3600)]
    # the stop ends: the interval's end changes and a new one opens
    eng.ingest([Sample("m1", "state", clock[0] - 0.5, 1)], now=clock[0])
    clock[0] += 1.0
    await svc.tick()
    assert {(i.start, i.end is None) for i in w.intervals[-1]} == {(T0 + 1800, False), (clock[0] - 1.5, True)}


def test_startup_reject_from_the_bus_reaches_the_engine() -> None:
    # startup_reject is a KPI signal: it is fed to the engine (not dead-lettered, not merely stored).
    from oee_stream.engine import Engine
    from oee_stream.service import ENGINE_SIGNALS, apply_messages

    assert "startup_reject" in ENGINE_SIGNALS
    eng = Engine(plant(policies={"allowed_lateness_s": 3600}))
    samples = [Sample("m1", "state", T0, 1), Sample("m1", "total", T0, 0), Sample("m1", "reject", T0, 0),
               Sample("m1", "startup_reject", T0, 0), Sample("m1", "total", T0 + 600, 100),
               Sample("m1", "reject", T0 + 600, 6), Sample("m1", "startup_reject", T0 + 600, 4)]
    msgs = [bus.Message(f"oee/v1/site/m1/{s.signal}", bus.encode_samples("c1", [s])) for s in samples]
    now = T0 + 900
    applied = apply_messages(eng, msgs, now)
    assert applied.dead == [] and applied.accepted == len(samples)
    [r] = eng.range_results(now, ["m1"], [T0], [now])
    assert r.reject == 6 and r.six_big_losses_s["startup_rejects"] == 4.0
    assert r.six_big_losses_s["production_rejects"] == 2.0
