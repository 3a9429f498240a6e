"""An operator's reason for a downtime event reaches the engine's KPI records: the service reads the coded
events from PostgreSQL and the stop seconds of that event count under the operator's reason in
`downtime_by_reason_s` of the windows the engine still emits; running time is never re-booked."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from oee_stream import bus
from oee_stream.bus import Sample
from oee_stream.config import Plant
from oee_stream.engine import KpiResult
from oee_stream.service import REASONS_POLL_S, EngineService
from oee_stream.storage import edits
from oee_stream.storage.writer import StorageWriter

# A Wednesday morning inside the demo's early shift (Europe/Berlin, 06:00-14:00 local).
T0 = datetime(2026, 3, 4, 6, 0, tzinfo=UTC).timestamp()


def _press_hour(results: list[KpiResult], start: float) -> KpiResult:
    [r] = [r for r in results if r.entity == "press-1" and r.window == "1h" and r.end == start]
    return r


async def test_operator_reason_is_booked_in_downtime_by_reason(db: str, plant: Plant) -> None:
    clock = [T0 + 600.0]
    async with StorageWriter(db, flush_interval_s=0.05) as writer:
        svc = EngineService(plant, bus.MqttSettings(), writer, clock=lambda: clock[0])
        # running, then a 120 s stop the PLC calls "die failure" (code 3), then running again
        svc.engine.ingest([
            Sample("press-1", "state", T0, 1), Sample("press-1", "product", T0, "6063-T5"),
            Sample("press-1", "total", T0, 0), Sample("press-1", "reject", T0, 0),
            Sample("press-1", "state", T0 + 300, 3), Sample("press-1", "state", T0 + 420, 1),
            Sample("press-1", "total", T0 + 590, 100),
        ], now=clock[0])
        await svc.tick()
        await writer.flush()
        before = _press_hour(svc.stats.last_results, clock[0])
        assert before.downtime_by_reason_s.get("die failure") == 120

        async with await psycopg.AsyncConnection.connect(db) as conn:
            # running time stays running: the API refuses it, and the engine never sees it
            await conn.execute("UPDATE state_intervals SET reason = 'no operator', reason_source = 'operator' "
                               "WHERE machine_id = 'press-1' AND time_class = 'running'")
            await conn.commit()
            await edits.set_reason(conn, "op", "press-1", datetime.fromtimestamp(T0 + 300, UTC),
                                   reason="hydraulic leak", category="mechanical", comment=None)

        # before the next poll the engine still books the PLC's reason; after it, the operator's
        clock[0] += 1.0
        await svc.tick()
        assert _press_hour(svc.stats.last_results, clock[0]).downtime_by_reason_s.get("die failure") == 120
        clock[0] += REASONS_POLL_S
        await svc.tick()
        after = _press_hour(svc.stats.last_results, clock[0])
        assert after.downtime_by_reason_s == {"hydraulic leak": 120}
        assert after.seconds["unplanned_stop"] == before.seconds["unplanned_stop"] == 120
        assert after.seconds["running"] > before.seconds["running"]  # the clock moved on, running stays running
