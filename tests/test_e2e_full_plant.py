"""End to end with every machine type of the simulated plant (simulators/full.yaml on simulators/plant-full.yaml):
extrusion press, casting line, rolling mill (tonnes, grade change) and packing line over OPC UA, melting furnace
over Modbus TCP (multi-signal `_batch` messages) → mosquitto → engine. The engine's counts, time classes and
KPIs must equal the simulator's ground-truth ledger.
"""

from __future__ import annotations

import asyncio
import shutil
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
PLANT = ROOT / "simulators" / "plant-full.yaml"
SCENARIO = ROOT / "simulators" / "full.yaml"
CONNECTORS = ROOT / "simulators" / "full-connectors"
RUN_S = 20.0  # the scripts show every new machine's micro stop, real stop and product change by then
SKIP_S = 5.0  # time classes are compared from here: every connector has delivered its first values
SECONDS_TOL = 0.3  # Modbus stamps a change with the poll response (100 ms polls)
KPI_TOL = 0.02
THRESHOLD_MARGIN_S = 0.5


async def _clear_of_the_threshold(sim: PlantSimulator) -> float:
    """A `now` at which no open stop is within THRESHOLD_MARGIN_S of its machine's micro-stop threshold.

    An open stop is classified by its length at `now`, and the engine's stop began at the connector's poll,
    up to a poll later than the ledger's: a stop of about the threshold's length may be a micro stop to one
    and an unplanned stop to the other.
    """
    for _ in range(5):
        now = time.time()
        waits = [sim.microstop_threshold(m) + THRESHOLD_MARGIN_S - (now - since) for m in sim.ledger.machines
                 if (since := sim.open_stop_since(m)) is not None
                 and abs(now - since - sim.microstop_threshold(m)) < THRESHOLD_MARGIN_S]
        if not waits:
            return now
        await asyncio.sleep(max(waits))
    raise AssertionError("open stops stay near the micro-stop threshold")


@pytest.mark.e2e
async def test_every_machine_type_matches_the_ledger(fresh_db_url: str, mqtt_url: str, tmp_path: Path) -> None:
    conn_dir = tmp_path / "connectors"
    shutil.copytree(CONNECTORS, conn_dir)
    mb = conn_dir / "modbus-full.yaml"
    doc = yaml.safe_load(mb.read_text())
    for g in doc["groups"]:
        g["poll_interval_ms"] = 100  # a state change is stamped at most 0.1 s late
    mb.write_text(yaml.safe_dump(doc))
    settings = Settings(
        plant=PLANT, connectors=conn_dir, scenario=SCENARIO, database_url=fresh_db_url, mqtt_url=mqtt_url,
        api_port=free_port(), tick_s=0.5, data_dir=tmp_path / "var", record_path=tmp_path / "bus.jsonl",
    )
    plant = load_plant(PLANT)
    machines = [m.id for m in plant.machines]
    assert set(machines) == {"press-1", "caster-1", "furnace-1", "mill-1", "line-1"}
    async with running_service(settings, embedded=False, simulate=True, seed=5) as run:
        sim: PlantSimulator = run.simulator
        await asyncio.sleep(RUN_S)
        await sim.freeze()  # the PLCs keep serving their last values; nothing is in flight at the end
        await asyncio.sleep(1.5)
        deadline = time.monotonic() + 20
        while any(c.stats.buffered for c in run.connectors):
            assert time.monotonic() < deadline, [c.stats.as_dict() for c in run.connectors]
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # the engine ingests what the broker delivered
        now = await _clear_of_the_threshold(sim)
        sim.held_until(now)
        engine = run.service.engine
        whole = {r.entity: r for r in engine.range_results(now, machines, [sim.t0] * len(machines),
                                                           [now] * len(machines))}
        start = sim.t0 + SKIP_S
        window = {r.entity: r for r in engine.range_results(now, machines, [start] * len(machines),
                                                            [now] * len(machines))}
        for c in run.connectors:
            assert c.stats.dropped == 0 and c.stats.source_errors == 0, c.stats.as_dict()

    first = first_counter_values(settings.record_path)  # type: ignore[arg-type]
    checked: dict[str, Any] = {}
    for m in machines:
        # Counts over the whole run: what the PLC counted before the connector's first reading is the
        # engine's baseline, not its to count.
        truth = sim.ledger.summary(m, sim.t0, now, plant)
        got = whole[m]
        want_total = truth["total"] - first.get((m, "total"), 0.0)
        want_reject = truth["reject"] - first.get((m, "reject"), 0.0)
        assert want_total > 0 and want_reject > 0, (m, truth, first)
        assert got.total == pytest.approx(want_total, rel=1e-6, abs=1e-3), (m, got.total, want_total)
        assert got.reject == pytest.approx(want_reject, rel=1e-6, abs=1e-3), (m, got.reject, want_reject)

        # Time classes and KPIs over a window that starts after every connector delivered.
        truth = sim.ledger.summary(m, start, now, plant)
        got = window[m]
        for cls in ("running", "planned_stop", "unplanned_stop", "micro_stop", "unknown"):
            assert got.seconds[cls] == pytest.approx(truth["seconds"][cls], abs=SECONDS_TOL), (m, cls, got.seconds,
                                                                                               truth["seconds"])
        for k in ("availability", "performance", "quality", "oee"):
            assert getattr(got, k) is not None and truth[k] is not None, (m, k)
            assert abs(getattr(got, k) - truth[k]) <= KPI_TOL, (m, k, getattr(got, k), truth[k])
        checked[m] = sim.ledger.summary(m, sim.t0, now, plant)["stops"]
    # The new machine types did what the scenario promises.
    for m in ("mill-1", "line-1"):
        assert checked[m]["micro_stop"] >= 1 and checked[m]["unplanned_stop"] >= 1, (m, checked[m])
        products = {p.product for p in sim.ledger.machines[m].products}
        assert len(products) == 2, (m, products)  # a grade / format change happened
        assert window[m].seconds["planned_stop"] > 0, m  # the changeover
    assert whole["mill-1"].unit == "t" and whole["line-1"].unit == "packs"
