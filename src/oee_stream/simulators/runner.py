"""Runs a scenario in real time against the OPC UA and Modbus simulator servers.

One asyncio task replays the precomputed timeline: when an event's time comes it is written to its server
with the event's exact timestamp and recorded in the ledger, so the ledger is exactly what was served.

Tests and tools steer the running plant through `PlantSimulator`: `force_state`/`release_state` hold a
machine in a PLC state, `restart_server` reboots a protocol server while the PLCs keep working, and
`freeze` stops the clock (the servers keep their last values).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from oee_stream.config import Plant, load_plant
from oee_stream.simulators.ledger import Ledger, StateInterval
from oee_stream.simulators.modbus_server import ModbusSimServer
from oee_stream.simulators.opcua_server import OpcUaSecurity, OpcUaSimServer
from oee_stream.simulators.scenario import Scenario, load_scenario
from oee_stream.simulators.simulate import CountDelta, SimEvent, Simulation, StateTruth, Value

log = logging.getLogger(__name__)

MAX_SLEEP_S = 0.25  # wake up at least this often so the ledger's known_until follows the clock
LEDGER_FLUSH_S = 5.0


@dataclass
class _Hold:
    """A machine held in a forced PLC state: what its own timeline did meanwhile, shown at release."""

    code: int
    counts: list[CountDelta] = field(default_factory=list)
    product: str | None = None


@dataclass
class PlantSimulator:
    scenario: Scenario
    simulation: Simulation
    ledger: Ledger
    opcua: OpcUaSimServer | None
    modbus: ModbusSimServer | None
    plant: Plant | None = None  # needed by force_state (state table, micro-stop threshold)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    # One writer at a time: the driver task and force/release must not interleave their writes.
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _held: dict[str, _Hold] = field(default_factory=dict, repr=False)
    # What each machine's own timeline shows now (state truth, every signal's value, quality).
    _truth: dict[str, StateTruth] = field(default_factory=dict, repr=False)
    _values: dict[str, dict[str, Value]] = field(default_factory=dict, repr=False)
    _good: dict[str, bool] = field(default_factory=dict, repr=False)
    _forced_once: set[str] = field(default_factory=set, repr=False)  # their stops need _reclassify

    @property
    def t0(self) -> float:
        return self.simulation.t0

    @property
    def opcua_endpoint(self) -> str | None:
        return self.opcua.endpoint if self.opcua is not None else None

    @property
    def modbus_address(self) -> tuple[str, int] | None:
        return self.modbus.address if self.modbus is not None else None

    def _server_of(self, machine: str) -> OpcUaSimServer | ModbusSimServer | None:
        proto = self.scenario.machines[machine].protocol
        return self.opcua if proto == "opcua" else self.modbus

    async def _write(self, ev: SimEvent) -> None:
        server = self._server_of(ev.machine)
        if server is not None:
            await server.write(ev)
        self.ledger.apply(ev)

    async def _apply(self, ev: SimEvent) -> None:
        if ev.state is not None:
            self._truth[ev.machine] = ev.state
        self._values.setdefault(ev.machine, {}).update(ev.values)
        self._good[ev.machine] = ev.good
        hold = self._held.get(ev.machine)
        if hold is None:
            await self._write(ev)
            return
        # Held: the PLC shows the forced state and its values freeze; the timeline goes on underneath.
        hold.counts.extend(ev.counts)
        if ev.product is not None:
            hold.product = ev.product

    async def catch_up(self, now: float | None = None) -> None:
        """Apply every event due by `now` (default: the wall clock)."""
        async with self._lock:
            await self._catch_up_locked(time.time() if now is None else now)

    async def _catch_up_locked(self, now: float) -> None:
        for ev in self.simulation.pop_until(now):
            await self._apply(ev)
        self.ledger.advance(now)
        for machine in self._forced_once:
            self._reclassify(machine)

    # ------------------------------------------------------------------------------------- steering

    async def force_state(self, machine: str, state_code: int, reason: str | None = None) -> float:
        """Hold `machine` in PLC state `state_code` until `release_state(machine)`; returns the event time.

        The code is written now through the machine's real server (OPC UA `State` variable, Modbus status
        register), so it travels the whole pipeline like a PLC's own change, and the ledger records an
        interval with the class of the code in the plant's state table and `reason` (default: the table's
        reason). While held, the machine's values freeze (counters do not move) and its own timeline keeps
        running underneath; forcing again replaces the held code. The code must be in the machine's
        state table: an unmapped code has no ground truth to compare with. Raises KeyError for a machine
        that is not simulated, ValueError for a code not in its state table.
        """
        truth = self._forced_truth(machine, state_code, reason)
        async with self._lock:
            now = round(time.time(), 3)
            await self._catch_up_locked(now)  # everything due before the forced change is served first
            hold = self._held.get(machine)
            if hold is None:
                self._held[machine] = _Hold(state_code)
            else:
                hold.code = state_code
            self._forced_once.add(machine)
            await self._write(SimEvent(now, machine, {"state": state_code}, True, state=truth))
            self._reclassify(machine)
        log.info("simulator: %s held in state %d (%s)", machine, state_code, truth.reason)
        return now

    async def release_state(self, machine: str) -> float:
        """End a `force_state` hold; returns the event time (a no-op returning it if not held).

        The machine shows its timeline's current values again: its state, and the counts made during the
        hold, which the ledger attributes to the release moment (nobody could have seen them earlier, as
        with a bad-status window).
        """
        async with self._lock:
            now = round(time.time(), 3)
            await self._catch_up_locked(now)
            hold = self._held.pop(machine, None)
            if hold is None:
                return now
            truth = self._truth.get(machine)
            merged: dict[str, list[float]] = {}
            for c in hold.counts:
                acc = merged.setdefault(c.product, [0.0, 0.0, 0.0])
                acc[0] += c.total
                acc[1] += c.reject
                acc[2] += c.input
            counts = tuple(CountDelta(a[0], a[1], p, a[2]) for p, a in merged.items())
            # Every signal as the timeline shows it now, the state code included.
            values = dict(self._values.get(machine, {}))
            await self._write(SimEvent(now, machine, values, self._good.get(machine, True), state=truth, counts=counts,
                                       product=hold.product, fault="force_release"))
            self._reclassify(machine)
        log.info("simulator: %s released", machine)
        return now

    def _forced_truth(self, machine: str, code: int, reason: str | None) -> StateTruth:
        if machine not in self.scenario.machines:
            raise KeyError(f"no simulated machine {machine!r}; allowed: {sorted(self.scenario.machines)}")
        if self.plant is None:
            raise RuntimeError("force_state needs the plant model (run_plant_simulator sets it)")
        pm = self.plant.machine(machine)
        table = self.plant.state_tables.get(pm.state_table or "", {})
        sc = table.get(code)
        if sc is None:
            raise ValueError(f"state code {code} is not in state table {pm.state_table!r} of {machine}; "
                             f"allowed: {sorted(table)}")
        return StateTruth(code, sc.time_class, reason if reason is not None else sc.reason)

    def microstop_threshold(self, machine: str) -> float:
        """The machine's micro-stop threshold (its own, or the plant's)."""
        assert self.plant is not None
        pm = self.plant.machine(machine)
        return (pm.microstop_threshold_s if pm.microstop_threshold_s is not None
                else self.plant.policies.microstop_threshold_s)

    def open_stop_since(self, machine: str) -> float | None:
        """When the machine's open stop began, its consecutive unplanned rows taken as one as the engine takes
        them; None when the machine is not stopped unplanned now."""
        ivs = self.ledger.machines[machine].intervals
        runs = _stop_runs(ivs)
        if runs and runs[-1][1] == len(ivs) - 1 and ivs[-1].end is None:
            return ivs[runs[-1][0]].start
        return None

    def _reclassify(self, machine: str, open_until: float | None = None) -> None:
        """Classify unplanned stops the way the engine does once a hold has cut or joined them.

        The engine makes a run of consecutive unplanned rows shorter than the threshold a micro stop, and
        the whole run an unplanned stop otherwise. The timeline's own stops are single intervals already
        classified that way; a forced stop can split one or be glued to one, so every closed run of a held
        machine is reclassified as a whole.
        """
        threshold = self.microstop_threshold(machine)
        ivs = self.ledger.machines[machine].intervals
        for i, j in _stop_runs(ivs):
            end = ivs[j].end if ivs[j].end is not None else open_until
            if end is not None:  # an open run is decided when it ends (or, frozen, by its length so far)
                cls = "micro_stop" if end - ivs[i].start < threshold else "unplanned_stop"
                for iv in ivs[i:j + 1]:
                    iv.time_class = cls

    async def restart_server(self, protocol: Literal["opcua", "modbus"], down_s: float) -> float:
        """Reboot the OPC UA or Modbus server for `down_s` seconds while the PLCs keep working.

        Events go on being recorded in the ledger and kept in the server's memory; the restarted server
        shows the latest values (OPC UA with their original source timestamps). Returns the wall-clock time
        of the stop.
        """
        server = self.opcua if protocol == "opcua" else self.modbus
        if server is None:
            raise ValueError(f"this scenario has no {protocol} machines")
        return await server.restart(down_s)

    async def freeze(self) -> None:
        """Stop the plant's clock: no more events, the servers keep serving their last values.

        Follow with `held_until(now)` before reading the ledger.
        """
        task, self._task = self._task, None
        if task is not None:
            await _cancel_and_wait(task)

    def held_until(self, now: float) -> None:
        """After `freeze`: every machine held its last state up to `now`; record that in the ledger.

        A stop still open at the freeze never ends as the scenario planned, so it is classified by its
        length up to `now`, as the engine does (shorter than the micro-stop threshold: micro stop).
        """
        self.ledger.advance(now)
        if self.plant is None:
            return
        for machine in self.ledger.machines:
            self._reclassify(machine, open_until=now)

    async def _drive(self) -> None:
        # Runs until cancelled; each pass is bounded by the events due now.
        while True:
            await self.catch_up()
            delay = self.simulation.peek_ts() - time.time()
            await asyncio.sleep(min(max(delay, 0.0), MAX_SLEEP_S))


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for it to end (a failure of its own is raised).

    Unlike `with suppress(CancelledError): await task`, a cancellation of the *caller* while it waits is passed
    on, not swallowed.
    """
    me = asyncio.current_task()
    before = me.cancelling() if me is not None else 0
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if me is not None and me.cancelling() > before:
            raise


def _stop_runs(ivs: list[StateInterval]) -> list[tuple[int, int]]:
    """(first, last) index of every run of consecutive unplanned or micro-stop rows."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(ivs):
        if ivs[i].time_class not in ("unplanned_stop", "micro_stop"):
            i += 1
            continue
        j = i
        while j + 1 < len(ivs) and ivs[j + 1].time_class in ("unplanned_stop", "micro_stop"):
            j += 1
        runs.append((i, j))
        i = j + 1
    return runs


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
        sim = PlantSimulator(scenario, simulation, ledger, opcua, modbus, plant=plant_model)
        # The events at t0 (the initial state) are on the servers before anyone is told they are up.
        await sim.catch_up(max(time.time(), simulation.t0))
        sim._task = asyncio.create_task(sim._drive(), name="plant-simulator")
        yield sim
    finally:
        failure: BaseException | None = None
        try:
            if sim is not None and sim._task is not None:
                task = sim._task
                if not task.done():
                    await _cancel_and_wait(task)
                elif not task.cancelled():
                    failure = task.exception()
        finally:
            # The servers stop even when the driver failed or this task is cancelled once more meanwhile.
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
