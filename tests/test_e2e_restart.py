"""End to end across a restart of the service: simulated PLCs keep running while `oee-stream run` (connectors,
engine, API) is stopped and started again on the same database. The restarted engine reads its memory back
from the database, so its counts since the plant started equal the simulator's ledger: nothing counted
before the restart is forgotten (a cold engine would count from its own start only).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from oee_stream.config import load_plant
from oee_stream.embedded import free_port
from oee_stream.runtime import running_service
from oee_stream.settings import Settings
from oee_stream.simulators.runner import run_plant_simulator
from tests.harness import first_counter_values

RUN_S = 8.0


@pytest.mark.e2e
async def test_counts_survive_a_restart_of_the_service(fresh_db_url: str, mqtt_url: str, tmp_path: Path) -> None:
    from test_e2e import _test_files

    plant_path, conn_dir, scen_path = _test_files(tmp_path)
    plant = load_plant(plant_path)
    machines = [m.id for m in plant.machines]
    record = tmp_path / "bus.jsonl"

    def settings() -> Settings:
        return Settings(plant=plant_path, connectors=conn_dir, scenario=scen_path, database_url=fresh_db_url,
                        mqtt_url=mqtt_url, api_port=free_port(), tick_s=0.5, data_dir=tmp_path / "var",
                        record_path=record)

    async with run_plant_simulator(scen_path, plant, opcua_port=free_port(), modbus_port=free_port(),
                                   seed=5) as sim:
        assert sim.opcua_endpoint and sim.modbus_address
        env = {"OEE_SIM_OPCUA_ENDPOINT": sim.opcua_endpoint,
               "OEE_SIM_MODBUS_CONTROLLER": f"tcp://{sim.modbus_address[0]}:{sim.modbus_address[1]}"}
        async with running_service(settings(), embedded=False, simulate=False, connector_env=env) as run:
            await asyncio.sleep(RUN_S)
            before = {r.entity: r.total for r in run.service.engine.range_results(
                time.time(), machines, [sim.t0] * len(machines), [time.time()] * len(machines))}
        assert all(before[m] > 0 for m in machines), before
        async with running_service(settings(), embedded=False, simulate=False, connector_env=env) as run:
            assert run.service.engine.stats.accepted > 0  # read back before the bus was read
            await asyncio.sleep(RUN_S / 2)
            await sim.freeze()
            await asyncio.sleep(2.5)  # the last values reach the engine
            now = time.time()
            sim.ledger.advance(now)
            got = {r.entity: r for r in run.service.engine.range_results(
                now, machines, [sim.t0] * len(machines), [now] * len(machines))}
    first = first_counter_values(record)
    for m in machines:
        truth = sim.ledger.summary(m, sim.t0, now, plant)
        want = truth["total"] - first.get((m, "total"), 0.0)
        assert want > before[m] > 0, (m, want, before[m])
        assert got[m].total == pytest.approx(want, rel=1e-6, abs=1e-3), (m, got[m].total, want, before[m])
        assert got[m].reject == pytest.approx(truth["reject"] - first.get((m, "reject"), 0.0), rel=1e-6, abs=1e-3)
