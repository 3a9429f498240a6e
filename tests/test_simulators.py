"""The simulated plant: determinism, ledger arithmetic, and both servers over real TCP."""

from __future__ import annotations

import asyncio
import itertools
import math
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from pymodbus.client import AsyncModbusTcpClient

from oee_stream.config import ConfigError, Plant, load_plant
from oee_stream.simulators.ledger import TIME_CLASSES, Ledger, build_ledger
from oee_stream.simulators.modbus_server import float32_words, words_float32
from oee_stream.simulators.opcua_server import node_id
from oee_stream.simulators.runner import run_plant_simulator
from oee_stream.simulators.scenario import Scenario, load_scenario
from oee_stream.simulators.simulate import Simulation, f32, generate

ROOT = Path(__file__).resolve().parents[1]
PLANT_PATH = ROOT / "deploy" / "demo" / "plant.yaml"
DEMO = ROOT / "simulators" / "demo.yaml"
FAULTS = ROOT / "simulators" / "faults.yaml"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(PLANT_PATH)


@pytest.fixture(scope="module")
def demo(plant: Plant) -> Scenario:
    return load_scenario(DEMO, plant)


@pytest.fixture(scope="module")
def faults(plant: Plant) -> Scenario:
    return load_scenario(FAULTS, plant)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _key(ev: Any) -> tuple[Any, ...]:
    return (ev.ts, ev.machine, dict(ev.values), ev.good, ev.state, ev.counts, ev.product, ev.fault)


# ------------------------------------------------------------------------------------------- scenario


def test_scenario_errors_name_file_and_field(tmp_path: Path, plant: Plant) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("machines:\n  press-1:\n    protocol: opcua\n    products: {6063-T5: {cycle_time_s: 2}}\n"
                   "    rejectprobability: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        load_scenario(bad)
    assert "bad.yaml" in str(exc.value) and "machines.press-1.rejectprobability" in str(exc.value)

    long_micro = tmp_path / "micro.yaml"
    long_micro.write_text(
        "machines:\n  press-1:\n    protocol: opcua\n    products: {6063-T5: {cycle_time_s: 2}}\n"
        "    stops:\n      kinds:\n        micro: {class: micro_stop, code: 0, duration_s: [1, 6]}\n"
        "        fail: {class: unplanned_stop, code: 1, duration_s: [8, 9]}\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_scenario(long_micro, plant)
    msg = str(exc.value)
    assert "machines.press-1.stops.kinds.micro.duration_s" in msg
    assert "machines.press-1.stops.kinds.fail.code: 1 maps to running" in msg


# ------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_timeline(demo: Scenario) -> None:
    a = [_key(e) for e in generate(demo, 5, T0, 300)]
    b = [_key(e) for e in generate(demo, 5, T0, 300)]
    c = [_key(e) for e in generate(demo, 6, T0, 300)]
    assert a == b
    assert a != c
    # Pulling the stream in small chunks (as the real-time runner does) gives the same events.
    sim = Simulation(demo, 5, T0)
    chunked: list[tuple[Any, ...]] = []
    for k in range(1, 3001):
        chunked.extend(_key(e) for e in sim.pop_until(T0 + k * 0.1))
    assert chunked == a
    assert [e.ts for e in generate(demo, 5, T0, 300)] == sorted(e.ts for e in generate(demo, 5, T0, 300))


@pytest.mark.parametrize("seed", [0, 1, 2, 42, 1234])
def test_first_40s_show_running_stops_and_rejects(demo: Scenario, plant: Plant, seed: int) -> None:
    led = build_ledger(demo, seed, T0, 40)
    for mid in demo.machines:
        s = led.summary(mid, T0, T0 + 40, plant)
        assert s["seconds"]["running"] > 0, mid
        assert s["stops"]["micro_stop"] >= 1 and s["stops"]["unplanned_stop"] >= 1, (mid, s["stops"])
        assert s["reject"] > 0 and s["total"] > s["reject"], mid
        assert s["seconds"]["unknown"] == 0


@pytest.mark.parametrize("seed", [3, 11])
def test_stop_lengths_classify_unambiguously(demo: Scenario, plant: Plant, seed: int) -> None:
    led = build_ledger(demo, seed, T0, 1200)
    kinds: set[str] = set()
    for mid, m in led.machines.items():
        threshold = plant.policies.microstop_threshold_s
        for iv in m.intervals[:-1]:
            assert iv.end is not None
            d = iv.end - iv.start
            kinds.add(iv.time_class)
            if iv.time_class == "micro_stop":
                assert d < threshold - 1.5, (mid, iv)
            elif iv.time_class in ("unplanned_stop", "planned_stop"):
                assert d >= threshold + 1, (mid, iv)
        # Stops are always separated by running time, so no stop is glued to another.
        for a, b in itertools.pairwise(m.intervals):
            assert a.time_class == "running" or b.time_class == "running", (mid, a, b)
        assert {p.product for p in m.products} <= set(plant.machine(mid).products)
    assert kinds == {"running", "micro_stop", "unplanned_stop", "planned_stop"}


def test_discrete_counters_follow_cycles(demo: Scenario) -> None:
    led = build_ledger(demo, 9, T0, 600)
    m = led.machines["press-1"]
    totals = [v["total"] for _, v, _ in m.writes if "total" in v]
    rejects = [v["reject"] for _, v, _ in m.writes if "reject" in v]
    assert totals == list(range(len(totals)))  # one increment per cycle, from 0
    assert sum(c.total for c in m.counts) == totals[-1]
    assert sum(c.reject for c in m.counts) == rejects[-1]
    # Cycles only complete while running, at the active product's cycle time or later.
    for c in m.counts:
        iv = next(i for i in reversed(m.intervals) if i.start <= c.ts)
        assert iv.time_class == "running"
    assert {c.product for c in m.counts} == {"6063-T5", "6082-T6"}  # the schedule changes product at 90 s


def test_rate_machine_accrues_float32_tonnes(demo: Scenario, plant: Plant) -> None:
    led = build_ledger(demo, 9, T0, 600)
    m = led.machines["furnace-1"]
    tapped = [v["total"] for _, v, _ in m.writes if "total" in v]
    assert all(b >= a for a, b in itertools.pairwise(tapped))
    assert all(f32(x) == x for x in tapped)
    assert math.isclose(sum(c.total for c in m.counts), tapped[-1], rel_tol=0, abs_tol=1e-9)
    s = led.summary("furnace-1", T0, T0 + 600, plant)
    run = s["seconds"]["running"]
    # 32 t/h actual against 36 t/h ideal; only ticks inside the window are counted, hence the margin.
    assert s["total"] == pytest.approx(32 / 3600 * run, rel=0.02)
    assert s["performance"] == pytest.approx(s["total"] * 3600 / 36 / (run + s["seconds"]["micro_stop"]))
    assert s["input"] == pytest.approx(s["total"] * 1.06, rel=1e-5)
    temps = [v["temperature"] for _, v, _ in m.writes if "temperature" in v]
    assert 690 < min(temps) and max(temps) < 750


# ------------------------------------------------------------------------------------------- ledger


def test_ledger_arithmetic(demo: Scenario, plant: Plant) -> None:
    led = build_ledger(demo, 21, T0, 300)
    windows = [(T0, T0 + 300), (T0 - 30, T0 + 60), (T0 + 17.3, T0 + 211.9), (T0 + 250, T0 + 400)]
    for mid in demo.machines:
        for start, end in windows:
            s = led.summary(mid, start, end, plant)
            assert set(s["seconds"]) == set(TIME_CLASSES)
            assert sum(s["seconds"].values()) == pytest.approx(end - start, abs=1e-6)
            assert s["availability"] * s["performance"] * s["quality"] == pytest.approx(s["oee"], rel=1e-12)
            assert s["good"] == s["total"] - s["reject"]
        # Before t0 and after the known horizon is unknown and stays in PPT (unknown_policy include).
        s = led.summary(mid, T0 - 30, T0 + 60, plant)
        assert s["seconds"]["unknown"] == pytest.approx(30)
        assert s["ppt"] == pytest.approx(90)
        assert led.summary(mid, T0 + 250, T0 + 400, plant)["seconds"]["unknown"] == pytest.approx(100)
        # Counts split at a boundary add up: start inclusive, end exclusive.
        cut = led.machines[mid].counts[5].ts
        left, right = led.summary(mid, T0, cut, plant), led.summary(mid, cut, T0 + 300, plant)
        whole = led.summary(mid, T0, T0 + 300, plant)
        assert left["total"] + right["total"] == pytest.approx(whole["total"])
        assert right["by_product"] and min(c.ts for c in led.machines[mid].counts if c.ts >= cut) == cut

    # Net run time by hand for press-1: ideal cycle time of each product × its count.
    s = led.summary("press-1", T0, T0 + 300, plant)
    by_hand = sum({"6063-T5": 2.0, "6082-T6": 2.5}[p] * b["total"] for p, b in s["by_product"].items())
    assert s["net_run_time"] == pytest.approx(by_hand)
    run = s["seconds"]["running"] + s["seconds"]["micro_stop"]
    assert s["performance"] == pytest.approx(by_hand / run)
    assert s["availability"] == pytest.approx(run / 300)


def test_ledger_zero_denominators_and_policies(demo: Scenario, plant: Plant) -> None:
    led = build_ledger(demo, 1, T0, 60)
    empty = led.summary("press-1", T0 + 10, T0 + 10, plant)
    assert empty["availability"] is None and empty["oee"] is None and empty["quality"] is None
    before = led.summary("press-1", T0 - 100, T0, plant)  # all unknown: PPT > 0, nothing made
    assert before["availability"] == 0 and before["performance"] is None and before["oee"] == 0
    iso = plant.model_copy(update={"policies": plant.policies.model_copy(update={"microstops_as": "availability"})})
    a, b = led.summary("press-1", T0, T0 + 60, plant), led.summary("press-1", T0, T0 + 60, iso)
    assert a["oee"] == pytest.approx(b["oee"])
    assert b["availability"] < a["availability"]


def test_ledger_json_roundtrip(tmp_path: Path, demo: Scenario, plant: Plant) -> None:
    led = build_ledger(demo, 4, T0, 120)
    path = tmp_path / "ledger.json"
    led.write(path)
    back = Ledger.read(path)
    for mid in demo.machines:
        assert back.summary(mid, T0, T0 + 130, plant) == led.summary(mid, T0, T0 + 130, plant)


def test_faults(faults: Scenario, plant: Plant) -> None:
    led = build_ledger(faults, None, T0, 120)
    press = led.machines["press-1"]
    totals = [v["total"] for _, v, good in press.writes if "total" in v and good]
    assert totals[:8] == [4294967290, 4294967291, 4294967292, 4294967293, 4294967294, 4294967295, 0, 1]
    # Bad window 30–38 s: the reader sees bad quality, the ledger sees unknown, counts show up at the end.
    bad = [iv for iv in press.intervals if iv.time_class == "unknown"]
    assert [(iv.start - T0, iv.end and iv.end - T0) for iv in bad] == [(30.0, 38.0)]
    assert any(not good for _, _, good in press.writes)
    assert not any(T0 + 30 < c.ts < T0 + 38 for c in press.counts)
    s = led.summary("press-1", T0, T0 + 120, plant)
    assert s["seconds"]["unknown"] == pytest.approx(8)
    assert s["coverage"] == pytest.approx(1 - 8 / 120)

    caster = led.machines["caster-1"]
    assert [f.ts - T0 for f in caster.faults] == [25.0]
    reset_write = next(v for ts, v, _ in caster.writes if ts == T0 + 25)
    assert reset_write == {"total": 0, "reject": 0}
    assert sum(c.total for c in caster.counts) > [v["total"] for _, v, _ in caster.writes if "total" in v][-1]


# ------------------------------------------------------------------------------------------- over TCP


async def test_opcua_nodes_carry_ledger_timestamps(plant: Plant) -> None:
    received: list[tuple[int, float]] = []
    two_values = asyncio.Event()

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            dv = data.monitored_item.Value
            if dv.StatusCode.is_good():
                received.append((int(val), dv.SourceTimestamp.timestamp()))
            if len({v for v, _ in received}) >= 2:
                two_values.set()

    # t0 a few seconds back: the replayed history is on the server at once, with its true past timestamps.
    async with run_plant_simulator(DEMO, plant, opcua_port=free_port(), modbus_port=free_port(), seed=3,
                                   t0=time.time() - 3.0) as sim:
        assert sim.opcua_endpoint is not None
        async with Client(sim.opcua_endpoint, timeout=5) as client:
            assert await client.get_namespace_index("urn:oee-stream:sim") == 2
            state = await client.get_node(node_id("press-1", "State")).read_value()
            assert state in plant.state_tables["press"]
            assert await client.get_node(node_id("press-1", "Product")).read_value() == "6063-T5"
            total = client.get_node(node_id("press-1", "TotalCount"))
            assert (await total.read_data_type_as_variant_type()) == ua.VariantType.UInt32
            sub = await client.create_subscription(50, Handler())
            await sub.subscribe_data_change(total)
            await asyncio.wait_for(two_values.wait(), timeout=8)  # a press cycle is 2.2 s
            await sub.delete()
        writes = {(v["total"], ts) for ts, v, _ in sim.ledger.machines["press-1"].writes if "total" in v}
    values = [v for v, _ in received]
    assert len(set(values)) >= 2 and values == sorted(values)
    for value, ts in received:
        match = [w for w in writes if w[0] == value]
        assert len(match) == 1 and abs(match[0][1] - ts) < 2e-6, (value, ts, match)


async def test_modbus_registers(plant: Plant) -> None:
    async with run_plant_simulator(DEMO, plant, opcua_port=free_port(), modbus_port=free_port(), seed=3,
                                   t0=time.time() - 4.0) as sim:
        assert sim.modbus_address is not None
        host, port = sim.modbus_address
        client = AsyncModbusTcpClient(host, port=port)
        try:
            assert await client.connect()
            before = time.time()
            rr = await client.read_holding_registers(0, count=10, device_id=1)
            after = time.time()
        finally:
            client.close()
        assert not rr.isError()
        regs = rr.registers
        writes = sim.ledger.machines["furnace-1"].writes
    seen_tapped = {v["total"] for ts, v, _ in writes if "total" in v and ts <= after}
    current = [v["total"] for ts, v, _ in writes if "total" in v and ts <= before][-1]
    tapped = words_float32(regs[1], regs[2])
    assert tapped in seen_tapped and tapped >= current > 0
    assert client.convert_from_registers(regs[1:3], client.DATATYPE.FLOAT32) == tapped  # ABCD
    assert words_float32(regs[3], regs[4]) == pytest.approx(tapped * 1.06, rel=1e-5)
    assert 0 <= words_float32(regs[5], regs[6]) <= tapped
    assert 690 < words_float32(regs[7], regs[8]) < 750
    assert regs[0] in plant.state_tables["furnace"]
    assert regs[9] == 1
    assert float32_words(tapped) == (regs[1], regs[2])


async def test_runner_cleans_up(plant: Plant) -> None:
    opcua_port, modbus_port = free_port(), free_port()
    before = asyncio.all_tasks()
    async with run_plant_simulator(DEMO, plant, opcua_port=opcua_port, modbus_port=modbus_port, seed=1):
        pass
    await asyncio.sleep(0.05)
    assert {t for t in asyncio.all_tasks() - before if not t.done()} == set()
    for port in (opcua_port, modbus_port):
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass


async def test_force_state_through_both_servers(plant: Plant) -> None:
    async with run_plant_simulator(DEMO, plant, opcua_port=free_port(), modbus_port=free_port(), seed=3) as sim:
        assert sim.opcua_endpoint is not None and sim.modbus_address is not None
        with pytest.raises(ValueError, match="not in state table"):
            await sim.force_state("press-1", 99)
        with pytest.raises(KeyError):
            await sim.force_state("nope", 1)
        async with Client(sim.opcua_endpoint, timeout=5) as client:
            state = client.get_node(node_id("press-1", "State"))
            total = client.get_node(node_id("press-1", "TotalCount"))
            t_force = await sim.force_state("press-1", 3, reason="andon test")
            assert await state.read_value() == 3
            frozen = await total.read_value()
            await asyncio.sleep(2.6)  # longer than a press cycle: the held counter must not move
            assert await total.read_value() == frozen
            await sim.force_state("furnace-1", 4)
            host, port = sim.modbus_address
            mb = AsyncModbusTcpClient(host, port=port)
            try:
                assert await mb.connect()
                rr = await mb.read_holding_registers(0, count=1, device_id=1)
            finally:
                mb.close()
            assert not rr.isError() and rr.registers[0] == 4
            t_release = await sim.release_state("press-1")
            await sim.release_state("furnace-1")
            after = await state.read_value()
            assert after == sim._values["press-1"]["state"]
            assert await total.read_value() == sim._values["press-1"]["total"]
        led = sim.ledger.machines["press-1"]
        forced = [iv for iv in led.intervals if iv.reason == "andon test"]
        assert len(forced) == 1 and forced[0].code == 3
        assert forced[0].start == t_force and forced[0].end == t_release
        # The script keeps press-1 running for its first 7 s, so the forced stop is a run of its own: the
        # engine calls it a micro stop when shorter than the 5 s threshold, and so must the ledger.
        i = led.intervals.index(forced[0])
        assert led.intervals[i - 1].time_class == led.intervals[i + 1].time_class == "running"
        held = t_release - t_force
        assert forced[0].time_class == ("micro_stop" if held < 5 else "unplanned_stop"), held
        assert not any(t_force < c.ts < t_release for c in led.counts)
        assert any(f.kind == "force_release" for f in led.faults)


def test_every_scenario_key_is_documented() -> None:
    from oee_stream.simulators.scenario import Faults, MachineScenario, StopKind, StopPattern

    doc = (ROOT / "simulators" / "README.md").read_text()
    missing = []
    for model, prefix in ((Scenario, ""), (MachineScenario, ""), (StopPattern, "stops."), (Faults, "faults."),
                          (StopKind, "")):
        for name, field in model.model_fields.items():
            key = field.alias or name
            if f"`{prefix}{key}" not in doc and f"`{key}`" not in doc and f"{{{key}" not in doc and f" {key}`" not in doc:
                missing.append(f"{model.__name__}.{key}")
    assert not missing, f"undocumented scenario keys: {missing}"
