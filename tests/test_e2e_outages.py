"""End to end through outages: simulated PLCs → OPC UA / Modbus connectors (disk spool) → a real mosquitto →
engine → PostgreSQL, while the broker is restarted, the OPC UA server is restarted and the Modbus server is
restarted. At the end the engine's counts for each machine equal the simulator's ledger: no count is lost
(counters are cumulative, the spools keep what the broker could not take) and none is counted twice.

The broker must be the private one (it is stopped and started), so the test is skipped when
OEE_TEST_MQTT_URL points at an external broker (the `mqtt_broker` fixture does that).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from oee_stream.config import load_plant
from oee_stream.embedded import free_port
from oee_stream.runtime import running_service
from oee_stream.settings import Settings
from oee_stream.simulators.runner import PlantSimulator
from tests.harness import first_counter_values

ROOT = Path(__file__).resolve().parents[1]
OUTAGE_S = 3.0
SETTLE_S = 7.0  # after an outage: reconnect (backoff ≤ 2 s here) and replay


def _files(tmp: Path) -> tuple[Path, Path, Path]:
    from test_e2e import _test_files

    plant_path, conn_dir, scen_path = _test_files(tmp)
    for f in conn_dir.glob("*.yaml"):
        # `${VAR:-default}` placeholders survive a YAML round trip as plain strings.
        doc = yaml.safe_load(f.read_text())
        doc["reconnect_max_s"] = 2
        doc["publish"] = {**doc.get("publish", {}), "buffer": "disk", "spool_dir": str(tmp / "spool" / f.stem),
                          "linger_ms": 20}
        f.write_text(yaml.safe_dump(doc))
    return plant_path, conn_dir, scen_path


async def _wait_reconnected(stats: Any, timeout_s: float = 30) -> float:
    deadline = time.monotonic() + timeout_s
    while not stats.source_connected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"connector did not reconnect: {stats.as_dict()}")
        await asyncio.sleep(0.05)
    return time.time()


async def _wait_drained(connectors: list[Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(c.stats.buffered for c in connectors) or not all(c.stats.broker_connected for c in connectors):
        if time.monotonic() > deadline:
            raise TimeoutError(f"connectors still buffering: {[c.stats.as_dict() for c in connectors]}")
        await asyncio.sleep(0.1)


@pytest.mark.e2e
async def test_counts_survive_broker_and_plc_restarts(fresh_db_url: str, mqtt_broker: Any, tmp_path: Path) -> None:
    plant_path, conn_dir, scen_path = _files(tmp_path)
    settings = Settings(
        plant=plant_path, connectors=conn_dir, scenario=scen_path, database_url=fresh_db_url,
        mqtt_url=mqtt_broker.url, api_port=free_port(), tick_s=0.5, data_dir=tmp_path / "var",
        record_path=tmp_path / "bus.jsonl",
    )
    plant = load_plant(plant_path)
    machines = [m.id for m in plant.machines]
    try:
        async with running_service(settings, embedded=False, simulate=True, seed=11) as run:
            sim: PlantSimulator = run.simulator
            assert sim.opcua is not None and sim.modbus is not None
            conns = run.connectors
            assert {type(c).__name__ for c in conns} == {"OpcUaConnector", "ModbusConnector"}
            await asyncio.sleep(6.0)

            # 1. the broker goes away for 3 s: connectors spool, the engine reconnects
            mqtt_broker.stop()
            await asyncio.sleep(OUTAGE_S)
            assert any(c.stats.buffered for c in conns), "nothing was spooled while the broker was down"
            mqtt_broker.start()
            await asyncio.sleep(SETTLE_S)

            by_id = {c.id: c.stats for c in conns}
            ua, mb = by_id["opcua-demo"], by_id["modbus-demo"]

            # 2. the OPC UA server restarts (press-1, caster-1)
            t_down = await sim.restart_server("opcua", OUTAGE_S)
            ua_gap = await _wait_reconnected(ua) - t_down
            await asyncio.sleep(SETTLE_S)

            # 3. the Modbus server restarts (furnace-1)
            t_down = await sim.restart_server("modbus", OUTAGE_S)
            mb_gap = await _wait_reconnected(mb) - t_down
            await asyncio.sleep(SETTLE_S)

            # Freeze the plant (the servers keep their last values) and let everything arrive.
            await sim.freeze()
            await asyncio.sleep(1.0)
            await _wait_drained(conns, 30)
            await asyncio.sleep(2.0)  # the engine ingests what the broker delivered
            now = time.time()
            sim.ledger.advance(now)

            assert ua.reconnects >= 1 and mb.reconnects >= 1, (ua.as_dict(), mb.as_dict())
            assert ua.dropped == mb.dropped == 0
            assert ua.extra["initial_restamped"] > 0

            engine = run.service.engine
            got = {r.entity: r for r in engine.range_results(now, machines, [sim.t0] * len(machines),
                                                              [now] * len(machines))}
            # A counter's first sample is the engine's baseline: what the PLC counted before the connector
            # first read it (the simulator starts before the connectors) is not the engine's to count.
            first = first_counter_values(settings.record_path)  # type: ignore[arg-type]
            for m in machines:
                truth = sim.ledger.summary(m, sim.t0, now, plant)
                r = got[m]
                want_total = truth["total"] - first.get((m, "total"), 0.0)
                want_reject = truth["reject"] - first.get((m, "reject"), 0.0)
                assert want_total > 0, m
                assert r.total == pytest.approx(want_total, rel=1e-6, abs=1e-3), (m, r.total, truth, first)
                assert r.reject == pytest.approx(want_reject, rel=1e-6, abs=1e-3), (m, r.reject, truth, first)
            # The PLC outages are unknown time, and only them: it ends when the connector is back, even for
            # values that did not change during the outage (they are re-stamped at the reconnect). The
            # broker outage is no unknown time at all (same connector session, the spool replayed it).
            # Slack: the time before the first sample at t0, and the detection of the loss.
            gaps = {"press-1": ua_gap, "caster-1": ua_gap, "furnace-1": mb_gap}
            for m in machines:
                unknown = got[m].seconds["unknown"]
                assert 0 < unknown <= gaps[m] + 2.0, (m, unknown, gaps[m])
                assert got[m].state != "unknown", (m, got[m].state, got[m].reason)
            assert sum(engine.stats.counter_resets.values()) == 0, engine.stats.counter_resets
    finally:
        mqtt_broker.start()
