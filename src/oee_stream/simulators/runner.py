"""Runs a scenario in real time against the OPC UA and Modbus simulator servers.

One asyncio task replays the precomputed timeline: when an event's time comes it is written to its server
with the event's exact timestamp and recorded in the ledger, so the ledger is exactly what was served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from oee_stream.config import Plant, load_plant
from oee_stream.simulators.ledger import Ledger
from oee_stream.simulators.modbus_server import ModbusSimServer
from oee_stream.simulators.opcua_server import OpcUaSecurity, OpcUaSimServer
from oee_stream.simulators.scenario import Scenario, load_scenario
from oee_stream.simulators.simulate import SimEvent, Simulation

log = logging.getLogger(__name__)

MAX_SLEEP_S = 0.25  # wake up at least this often so the ledger's known_until follows the clock
LEDGER_FLUSH_S = 5.0


@dataclass
class PlantSimulator:
    scenario: Scenario
    simulation: Simulation
    ledger: Ledger
    opcua: OpcUaSimServer | None
    modbus: ModbusSimServer | None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def t0(self) -> float:
        return self.simulation.t0

    @property
    def opcua_endpoint(self) -> str | None:
        return self.opcua.endpoint if self.opcua is not None else None

    @property
    def modbus_address(self) -> tuple[str, int] | None:
        return self.modbus.address if self.modbus is not None else None

    async def _apply(self, ev: SimEvent) -> None:
        proto = self.scenario.machines[ev.machine].protocol
        server = self.opcua if proto == "opcua" else self.modbus
        if server is not None:
            await server.write(ev)
        self.ledger.apply(ev)

    async def catch_up(self, now: float | None = None) -> None:
        """Apply every event due by `now` (default: the wall clock)."""
        now = time.time() if now is None else now
        for ev in self.simulation.pop_until(now):
            await self._apply(ev)
        self.ledger.advance(now)

    async def _drive(self) -> None:
        # Runs until cancelled; each pass is bounded by the events due now.
        while True:
            await self.catch_up()
            delay = self.simulation.peek_ts() - time.time()
            await asyncio.sleep(min(max(delay, 0.0), MAX_SLEEP_S))


def _resolve_plant(plant: Plant | Path | str) -> Plant:
    return plant if isinstance(plant, Plant) else load_plant(plant)


@contextlib.asynccontextmanager
async def run_plant_simulator(
    scenario_path: Path | str,
    plant: Plant | Path | str,
    *,
    opcua_port: int,
    modbus_port: int,
    seed: int | None = None,
    host: str = "127.0.0.1",
    t0: float | None = None,
    opcua_security: OpcUaSecurity | None = None,
    keep_writes: bool = True,
) -> AsyncIterator[PlantSimulator]:
    """Start both servers, replay the scenario in real time, and tear everything down on exit.

    `t0` defaults to the wall clock once the servers listen; a `t0` in the past replays the missed part
    at once (with its true, past timestamps). `seed` None uses the scenario's own seed.
    """
    plant_model = _resolve_plant(plant)
    scenario = load_scenario(scenario_path, plant_model)
    opcua_machines = {m: ms.is_rate for m, ms in scenario.machines.items() if ms.protocol == "opcua"}
    modbus_units = {m: ms.unit_id for m, ms in scenario.machines.items() if ms.protocol == "modbus"}
    codes: dict[str, dict[str, int]] = {}
    for m in modbus_units:
        pm = plant_model.machine(m)
        codes[m] = {}
        for p, spec in scenario.machines[m].products.items():
            code = spec.code if spec.code is not None else pm.products[p].code
            if code is not None:
                codes[m][p] = code

    opcua = OpcUaSimServer(opcua_machines, host=host, port=opcua_port, security=opcua_security) if opcua_machines else None
    modbus = ModbusSimServer(modbus_units, codes, host=host, port=modbus_port) if modbus_units else None
    started: list[OpcUaSimServer | ModbusSimServer] = []
    sim: PlantSimulator | None = None
    try:
        for server in (opcua, modbus):
            if server is not None:
                await server.start()
                started.append(server)
        simulation = Simulation(scenario, seed, time.time() if t0 is None else t0)
        ledger = Ledger(scenario=scenario.name, seed=simulation.seed, t0=simulation.t0, keep_writes=keep_writes)
        sim = PlantSimulator(scenario, simulation, ledger, opcua, modbus)
        # The events at t0 (the initial state) are on the servers before anyone is told they are up.
        await sim.catch_up(max(time.time(), simulation.t0))
        sim._task = asyncio.create_task(sim._drive(), name="plant-simulator")
        yield sim
    finally:
        failure: BaseException | None = None
        if sim is not None and sim._task is not None:
            task = sim._task
            if task.done() and not task.cancelled():
                failure = task.exception()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in reversed(started):
            try:
                await server.stop()
            except Exception:
                log.exception("stopping %s failed", type(server).__name__)
        if failure is not None:
            raise RuntimeError("the plant simulator's driver task failed") from failure


async def serve_forever(
    scenario: Path | str,
    plant: Plant | Path | str,
    *,
    opcua_port: int = 4840,
    modbus_port: int = 5020,
    seed: int | None = None,
    ledger_path: Path | str | None = None,
    host: str = "127.0.0.1",
) -> None:
    """Run the simulated plant until cancelled, writing the ledger every few seconds and at the end."""
    async with run_plant_simulator(
        scenario, plant, opcua_port=opcua_port, modbus_port=modbus_port, seed=seed, host=host,
        keep_writes=False,  # a long run would otherwise keep every value ever written
    ) as sim:
        log.info("simulating %s (seed %d): OPC UA %s, Modbus %s", sim.scenario.name, sim.simulation.seed,
                 sim.opcua_endpoint, sim.modbus_address)
        try:
            while True:
                await asyncio.sleep(LEDGER_FLUSH_S)
                if ledger_path is not None:
                    sim.ledger.write(ledger_path)
        finally:
            if ledger_path is not None:
                sim.ledger.write(ledger_path)


def main_simulate(
    scenario: Path | str,
    plant: Path | str,
    opcua_port: int = 4840,
    modbus_port: int = 5020,
    seed: int | None = None,
    ledger_path: Path | str | None = None,
) -> None:
    """Entry point for `oee-stream simulate`: blocks until Ctrl-C."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(scenario, plant, opcua_port=opcua_port, modbus_port=modbus_port, seed=seed,
                                  ledger_path=ledger_path))
