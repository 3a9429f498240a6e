"""Property tests: the vectorized engine equals the plain reference on random event streams."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oee_stream.bus import Sample
from oee_stream.engine import Engine, core
from oee_stream.engine.result import KpiResult
from oee_stream.reference import reference_window
from tests.engine_fixtures import plant

T0 = datetime(2026, 3, 2, 5, 0, tzinfo=UTC).timestamp()


def _examples(default: int) -> int:
    """Examples per property test: OEE_PROPERTY_EXAMPLES=2000 for a long hunt, the default in `make test`."""
    return int(os.environ.get("OEE_PROPERTY_EXAMPLES", default))


HORIZON = 4 * 3600.0

MACHINES = [
    {"id": "m1", "state_table": "t", "counter_width": 16, "microstop_threshold_s": 60,
     "products": {"a": {"ideal_cycle_time_s": 1.0, "code": 1}, "b": {"ideal_cycle_time_s": 2.5, "code": 2}}},
    {"id": "m2", "state_table": "t", "counter_width": 32,
     "products": {"a": {"ideal_cycle_time_s": 0.5}}},
    {"id": "m3", "state_source": "run_bit", "products": {"x": {"ideal_cycle_time_s": 3.0}}},
]
SHIFTS = [
    {"name": "early", "start": "06:00", "end": "08:00", "breaks": [{"start": "07:00", "end": "07:15"}]},
    {"name": "late", "start": "08:30", "end": "10:00"},
]

times = st.floats(min_value=0, max_value=HORIZON, allow_nan=False).map(lambda x: round(x, 3))


@st.composite
def streams(draw: st.DrawFn, *, ties: bool = False) -> list[Sample]:
    """Random samples of m1-m3. `ties`: a counter may have several readings at one source time (coarse PLC
    timestamps); their order is then the order they arrive in, so only tests that feed the list in order
    use them."""
    out: list[Sample] = []
    for m in ("m1", "m2"):
        for t in draw(st.lists(times, max_size=25, unique=True)):
            code = draw(st.sampled_from([0, 1, 1, 1, 2, 3, 4, 9]))
            q = draw(st.sampled_from(["good"] * 8 + ["bad", "uncertain"]))
            out.append(Sample(m, "state", T0 + t, code if q == "good" else None, q))
        # startup_reject is drawn independently of reject: the engine's clamp (more start-up rejects than
        # rejects in a window) is exercised as often as the ordinary case.
        for sig in ("total", "reject", "startup_reject"):
            ts = sorted(draw(st.lists(times, max_size=20, unique=not ties)))
            v = draw(st.integers(0, 65000))
            for t in ts:
                step = draw(st.sampled_from(["up", "up", "up", "reset", "jump"]))
                if step == "up":
                    v += draw(st.integers(0, 400))
                elif step == "reset":
                    v = draw(st.integers(0, 50))
                else:
                    v = draw(st.integers(0, 2**16 - 1))
                # m1's counter is 16 bits wide: larger values are impossible (the engine dead-letters them).
                v = min(v, 2**16 - 1) if m == "m1" else v
                out.append(Sample(m, sig, T0 + t, v, "good"))
    for t in draw(st.lists(times, max_size=5, unique=True)):
        # by name or by numeric code (an integer register, or a float as JSON may carry it)
        out.append(Sample("m1", "product", T0 + t, draw(st.sampled_from(["a", "b", 1, 2, 2.0])), "good"))
    for t in draw(st.lists(times, max_size=15, unique=True)):
        out.append(Sample("m3", "run", T0 + t, draw(st.booleans()), "good"))
    # replays: duplicates of earlier samples
    if out:
        out += draw(st.lists(st.sampled_from(out), max_size=5))
    return out


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _same_results(got: list[KpiResult], exp: list[KpiResult], keys: tuple[str, ...]) -> None:
    """Two lists of KpiResult equal: the same windows, seconds per class and `keys` (floats to 1e-9)."""
    assert len(got) == len(exp)
    for r, o in zip(got, exp, strict=True):
        assert (r.entity, r.window, r.start) == (o.entity, o.window, o.start)
        for cls, sec in o.seconds.items():
            assert _close(r.seconds[cls], sec), (r.entity, r.window, cls, r.seconds, o.seconds)
        for key in keys:
            got_v, exp_v = getattr(r, key), getattr(o, key)
            assert (got_v == exp_v) if not isinstance(exp_v, float) else _close(got_v, exp_v), (r.entity, key)


@settings(max_examples=_examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    samples=streams(ties=True),
    window=st.tuples(times, times),
    policies=st.fixed_dictionaries({
        "microstops_as": st.sampled_from(["performance", "availability"]),
        "unknown_policy": st.sampled_from(["include", "exclude"]),
    }),
)
def test_engine_equals_reference(samples: list[Sample], window: tuple[float, float],
                                 policies: dict[str, str]) -> None:
    p = plant(machines=MACHINES, shifts=SHIFTS, policies={**policies, "allowed_lateness_s": 10 * HORIZON})
    now = T0 + HORIZON + 1
    eng = Engine(p)
    eng.ingest(samples, now=now)
    a, b = sorted(window)
    b = b if b > a else a + 1
    ids = ["m1", "m2", "m3"]
    got = eng.range_results(now, ids, [T0 + a] * 3, [T0 + b] * 3)
    assert eng.origin is not None
    for mid, r in zip(ids, got, strict=True):
        ref = reference_window(p, mid, samples, now=now, start=T0 + a, end=T0 + b, origin=eng.origin)
        for cls, sec in ref["seconds"].items():
            assert _close(r.seconds[cls], sec), (mid, cls, r.seconds, ref["seconds"])
        assert sum(r.seconds.values()) == pytest.approx(b - a, abs=1e-6)
        for k in ("total", "reject", "good", "ppt_s", "run_time_s", "net_run_time_s", "availability",
                  "performance", "quality", "oee", "teep", "coverage", "stops", "mtbf_s", "mttr_s"):
            assert _close(getattr(r, k), ref[k]), (mid, k, getattr(r, k), ref[k])
        assert set(r.downtime_by_reason_s) == set(ref["downtime_by_reason_s"])
        for reason, sec in ref["downtime_by_reason_s"].items():
            assert _close(r.downtime_by_reason_s[reason], sec)
        assert r.six_big_losses_s.keys() == ref["six_big_losses_s"].keys()
        for loss, sec in ref["six_big_losses_s"].items():
            assert _close(r.six_big_losses_s[loss], sec), (mid, loss, r.six_big_losses_s, ref["six_big_losses_s"])


@settings(max_examples=_examples(60), deadline=None)
@given(samples=streams(), cut=times)
def test_rollup_of_parts_equals_whole(samples: list[Sample], cut: float) -> None:
    """Adding the time classes and counts of [a, c) and [c, b) gives the KPIs of [a, b)."""
    from oee_stream.engine import formulas as fx

    p = plant(machines=MACHINES, shifts=SHIFTS, policies={"allowed_lateness_s": 10 * HORIZON})
    now = T0 + HORIZON + 1
    eng = Engine(p)
    eng.ingest(samples, now=now)
    tl = eng.timeline(now)
    import numpy as np

    from oee_stream.engine.core import WindowSet

    m = np.array([0, 0, 0], dtype=np.int64)
    w = WindowSet(m, np.zeros(3, np.int64), np.array([T0, T0, T0 + cut]),
                  np.array([T0 + HORIZON, T0 + cut, T0 + HORIZON]), ("x",))
    x = eng.aggregate(tl, w)
    # Every feature adds up, except the start-up rejects' ideal seconds: they are clamped to the rejects per
    # window (docs/engine.md, "startup rejects"), so a part with more start-up rejects than rejects does not
    # add up to the whole; they are compared with the reference in test_engine_equals_reference instead.
    cols = np.arange(fx.N_FEATURES) != fx.IDEAL_STARTUP
    np.testing.assert_allclose((x[1] + x[2])[cols], x[0][cols], rtol=1e-9, atol=1e-6)
    assert (x[:, fx.IDEAL_STARTUP] <= x[:, fx.IDEAL_REJECT] + 1e-9).all()
    whole = fx.compute(x[0:1])
    parts = fx.compute((x[1] + x[2])[None, :])
    np.testing.assert_allclose(np.nan_to_num(whole.oee), np.nan_to_num(parts.oee), rtol=1e-9, atol=1e-12)


@settings(max_examples=_examples(60), deadline=None)
@given(n=st.integers(1, 3000), stop=st.floats(0, 1800), rejects=st.integers(0, 100))
def test_single_product_oee_is_good_times_ideal_over_ppt(n: int, stop: float, rejects: int) -> None:
    p = plant(policies={"allowed_lateness_s": 1e6})
    now = T0 + 3600
    eng = Engine(p)
    eng.ingest([
        Sample("m1", "state", T0, 1), Sample("m1", "state", T0 + 600, 0), Sample("m1", "state", T0 + 600 + stop, 1),
        Sample("m1", "total", T0, 0), Sample("m1", "total", T0 + 3000, n),
        Sample("m1", "reject", T0, 0), Sample("m1", "reject", T0 + 3000, min(rejects, n)),
    ], now=now)
    [r] = eng.range_results(now, ["m1"], [T0], [now])
    assert r.oee == pytest.approx((n - min(rejects, n)) * 1.0 / r.ppt_s, rel=1e-9)


@settings(max_examples=_examples(120), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(samples=streams(), data=st.data(),
       stale=st.sampled_from([None, 900.0]), micro=st.sampled_from([0.0, 60.0, 600.0]))
def test_incremental_equals_one_shot(samples: list[Sample], data: st.DataObject, stale: float | None,
                                     micro: float) -> None:
    """Batches arriving in any order, evaluated in between at a moving `now`, give exactly what one batch
    evaluated once gives: the incremental tables, the re-derivation of machines that got older samples,
    the open stops and the tails are invisible in the results."""
    pol = {"allowed_lateness_s": 10 * HORIZON, "stale_after_s": stale, "microstop_threshold_s": micro}
    machines = [dict(MACHINES[0], microstop_threshold_s=None), *MACHINES[1:],
                {"id": "m4", "state_source": "counts", "no_count_stop_after_s": 45,
                 "products": {"x": {"ideal_cycle_time_s": 2.0}}}]
    p = plant(machines=machines, shifts=SHIFTS, policies=pol)
    samples = samples + [Sample("m4", "total", T0 + t, i) for i, t in
                         enumerate(sorted(data.draw(st.lists(times, max_size=30, unique=True))))]
    now = T0 + HORIZON + 1
    # tiny log (it drops its dead entries many times over), rewritten a few entries at a time
    with patch.object(core, "LOG_INITIAL", 4), patch.object(core, "REWRITE_CHUNK", 3):
        _incremental_equals_one_shot(p, samples, data, now)


def _incremental_equals_one_shot(p: object, samples: list[Sample], data: st.DataObject, now: float) -> None:
    one = Engine(p)  # type: ignore[arg-type]
    one.ingest(samples, now=now)
    # mostly in time order (as from the bus), each signal with its own delay (state and counts over two
    # connectors), with some samples held back and delivered late
    lag = {sig: data.draw(st.sampled_from([0.0, 0.0, 20.0, 300.0]), label=f"lag {sig}")
           for sig in ("state", "run", "total", "reject", "startup_reject", "product")}
    order = sorted(range(len(samples)), key=lambda i: samples[i].ts + lag[samples[i].signal])
    held = data.draw(st.sets(st.sampled_from(order), max_size=8)) if order else set()
    stream = [i for i in order if i not in held] + sorted(held)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    inc = Engine(p)  # type: ignore[arg-type]
    inc.origin = one.origin
    prev = 0
    pairs = []
    for k, c in enumerate([*cuts, len(stream)]):
        inc.ingest([samples[i] for i in stream[prev:c]], now=now)
        prev = c
        at = T0 + HORIZON * (k + 1) / (len(cuts) + 2)
        if data.draw(st.booleans()):  # the same moment, computed from scratch
            fresh = Engine(p)  # type: ignore[arg-type]
            fresh.origin = one.origin
            fresh.ingest([samples[i] for i in stream[:c]], now=now)
            pairs.append((inc.results(at), fresh.results(at)))
        else:
            inc.timeline(at)
    ids = ["m1", "m2", "m3", "m4"]
    w = data.draw(st.tuples(times, times))
    a, b = sorted(w)
    b = b if b > a else a + 1
    pairs += [(inc.range_results(now, ids, [T0 + a] * 4, [T0 + b] * 4),
               one.range_results(now, ids, [T0 + a] * 4, [T0 + b] * 4)), (inc.results(now), one.results(now))]
    _assert_same_results(pairs)
    assert inc.state_intervals(now, now - 3600) == one.state_intervals(now, now - 3600)


def _assert_same_results(pairs: list[tuple[list[KpiResult], list[KpiResult]]]) -> None:
    for eng_res, ref_res in pairs:
        assert len(eng_res) == len(ref_res)
        for r, o in zip(eng_res, ref_res, strict=True):
            assert (r.entity, r.window, r.start) == (o.entity, o.window, o.start)
            for cls, sec in o.seconds.items():
                assert _close(r.seconds[cls], sec), (r.entity, r.window, cls, r.seconds, o.seconds)
            for key in ("total", "reject", "availability", "performance", "quality", "oee", "stops", "state",
                        "reason", "state_since", "product"):
                got, exp = getattr(r, key), getattr(o, key)
                assert (got == exp) if not isinstance(exp, float) else _close(got, exp), (r.entity, key, got, exp)
            assert r.downtime_by_reason_s.keys() == o.downtime_by_reason_s.keys()
            for loss, sec in o.six_big_losses_s.items():
                assert _close(r.six_big_losses_s[loss], sec), (r.entity, r.window, loss)


def test_counts_ahead_of_the_state_derive_as_they_come() -> None:
    """m1's counts come over a fast connector, its state over one 15 s behind: every series is in time order,
    so each tick derives what came without deriving a machine again from its log, and the results equal
    those of one batch. A state sample older than the state already derived still re-derives its machine."""
    p = plant(machines=MACHINES, shifts=SHIFTS)
    now = T0 + HORIZON + 1
    states = [Sample("m1", "state", T0 + 60.0 * k + 7.3, [1, 0, 1, 2][k % 4]) for k in range(60)]
    counts = [Sample("m1", sig, T0 + 10.0 * k + 1.1, k * (3 if sig == "total" else 1)) for k in range(360)
              for sig in ("total", "reject")]
    counts += [Sample("m1", "product", T0 + 1200.5, "b")]
    one = Engine(p)
    one.ingest(states + counts, now=now)
    inc = Engine(p)
    inc.origin = one.origin
    pairs = []
    for tick in np.arange(T0 + 20.0, T0 + 3700.0, 20.0):
        inc.ingest([x for x in counts if tick - 20.0 <= x.ts < tick]
                   + [x for x in states if tick - 35.0 <= x.ts < tick - 15.0], now=float(tick))
        inc.timeline(float(tick))
    assert inc.stats.rederived_machines == 0
    inc.ingest([x for x in states if T0 + 3685.0 <= x.ts], now=now)
    pairs.append((inc.results(now), one.results(now)))
    pairs.append((inc.range_results(now, ["m1"], [T0 + 100.0], [T0 + 3000.0]),
                  one.range_results(now, ["m1"], [T0 + 100.0], [T0 + 3000.0])))
    _assert_same_results(pairs)
    assert inc.stats.rederived_machines == 0
    inc.ingest([Sample("m1", "state", T0 + 3540.0, 0)], now=now + 1)
    inc.timeline(now + 1)
    assert inc.stats.rederived_machines == 1


@settings(max_examples=_examples(60), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(samples=streams(), n_ticks=st.integers(2, 12), cut=times)
def test_pruning_while_streaming_equals_one_batch(samples: list[Sample], n_ticks: int, cut: float) -> None:
    """An engine that forgets old data tick by tick (retention 1 h, pruned every 10 min) gives what an
    engine given everything at the end gives, for every window inside its memory."""
    p = plant(machines=MACHINES, shifts=SHIFTS, policies={"allowed_lateness_s": 10 * HORIZON})
    now = T0 + HORIZON + 1
    stream = sorted(samples, key=lambda x: x.ts)
    inc = Engine(p, retention_s=3600, prune_every_s=600)
    one = Engine(p, retention_s=3600, prune_every_s=600)
    edges = [int(len(stream) * k / n_ticks) for k in range(n_ticks + 1)]
    with patch.object(core, "REWRITE_CHUNK", 3):  # the log and arenas rewritten a few rows at a time
        for k in range(n_ticks):
            part = stream[edges[k]:edges[k + 1]]
            at = part[-1].ts + 1 if part else T0
            inc.ingest(part, now=now)
            inc.timeline(min(at, now))
    one.ingest(stream, now=now)
    got, exp = inc.results(now), one.results(now)
    assert inc.origin == one.origin and (inc.stats.prunes >= 1 or not stream)
    assert inc.origin is not None
    a = max(inc.origin, T0 + min(cut, HORIZON - 1))
    got += inc.range_results(now, ["m1", "m2", "m3"], [a] * 3, [now] * 3)
    exp += one.range_results(now, ["m1", "m2", "m3"], [a] * 3, [now] * 3)
    _same_results(got, exp, ("total", "reject", "oee", "stops", "state", "reason", "product"))


def test_polled_signals_repeats_leave_the_log_and_change_nothing() -> None:
    """PLCs polled every second repeat their state codes and counters: the engine keeps only the samples
    that change something (and each series' newest) in its log, and still computes exactly what an engine
    given everything at once computes -- also after late samples make it re-derive from that log."""
    rng = np.random.default_rng(3)
    p = plant(machines=MACHINES, shifts=SHIFTS, policies={"allowed_lateness_s": 600})
    secs = np.arange(0.0, 2 * 3600.0)
    samples: list[Sample] = []
    for mi, m in enumerate(("m1", "m2")):
        state = np.repeat(rng.choice([0, 1, 1, 1, 2, 3], 40), 180)[: len(secs)]  # a change every 3 min
        total = np.cumsum((state == 1) & (rng.random(len(secs)) < 0.7)) + 1000 * mi
        reject = np.cumsum(rng.random(len(secs)) < 0.01)
        for k, t in enumerate(secs):
            ts = T0 + 6 * 3600 + t + 0.1 * mi
            samples += [Sample(m, "state", ts, int(state[k])), Sample(m, "total", ts, int(total[k])),
                        Sample(m, "reject", ts, int(reject[k]))]
    samples += [Sample("m3", "run", T0 + 6 * 3600 + t, bool((t // 300) % 2)) for t in secs[::2]]
    now = T0 + 6 * 3600 + secs[-1] + 1
    one = Engine(p)
    one.ingest(samples, now=now)
    stream = sorted(samples, key=lambda x: x.ts)
    held = set(rng.choice(len(stream), 8, replace=False).tolist())  # each delivered >= 60 s late
    waiting = sorted(held)
    with patch.object(core, "LOG_INITIAL", 64):
        inc = Engine(p)
    inc.origin = one.origin
    step = 1300  # ~200 s of samples per tick: a held sample is at most ~260 s late (allowed: 600 s)
    for lo in range(0, len(stream), step):
        hi = min(lo + step, len(stream))
        due = [i for i in waiting if stream[i].ts + 60 <= stream[lo].ts]
        waiting = [i for i in waiting if stream[i].ts + 60 > stream[lo].ts]
        inc.ingest([stream[i] for i in range(lo, hi) if i not in held] + [stream[i] for i in due],
                   now=stream[hi - 1].ts + 1)
        inc.results(stream[hi - 1].ts + 1)
    inc.ingest([stream[i] for i in waiting], now=now)
    assert inc.stats.late_dropped == 0 and inc.stats.rederived_machines > 0
    assert inc._log.n < 0.5 * len(samples), (inc._log.n, len(samples))  # repeats left the log
    got, exp = inc.results(now), one.results(now)
    got += inc.range_results(now, ["m1", "m2", "m3"], [T0 + 6.5 * 3600] * 3, [now - 600] * 3)
    exp += one.range_results(now, ["m1", "m2", "m3"], [T0 + 6.5 * 3600] * 3, [now - 600] * 3)
    _same_results(got, exp, ("total", "reject", "oee", "stops", "state", "reason", "state_since"))
    assert inc.state_intervals(now, now - 3600) == one.state_intervals(now, now - 3600)


@settings(max_examples=_examples(60), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(samples=streams(), data=st.data())
def test_settled_repeats_leave_the_log_without_changing_results(samples: list[Sample], data: st.DataObject) -> None:
    """A stream delivered tick by tick with a short allowed lateness: repeats settle and leave the (tiny)
    log while late samples still make machines re-derive from it and a connector restart cuts a gap into
    m1; the results equal those of an engine given everything at once."""
    a, b = sorted(data.draw(st.tuples(times, times)))
    stream = sorted(samples, key=lambda x: x.ts)
    held = data.draw(st.sets(st.sampled_from(range(len(stream))), max_size=6)) if stream else set()
    _settled_repeats_case(samples, (T0 + a, T0 + max(b, a + 1)), held)


def test_repeats_during_a_connector_outage_stay_until_it_ends() -> None:
    """Found by the property test above: m1's connector goes offline at T0 and comes back as a new session
    an hour later. The state sample at T0 + 1 repeats the one at T0, but the gap row dated T0 (it only
    arrives with the new session) makes it a change again, so it must not have left the log meanwhile."""
    samples = [Sample(machine="m1", signal="state", ts=T0 + dt, value=0, quality="good") for dt in (0, 1, 3601)]
    samples += [Sample(machine="m3", signal="run", ts=T0 + dt, value=False, quality="good") for dt in (0, 1)]
    _settled_repeats_case(samples, (T0, T0 + 3690), set())


def _settled_repeats_case(samples: list[Sample], gap: tuple[float, float], held: set[int]) -> None:
    lateness = 300.0
    p = plant(machines=MACHINES, shifts=SHIFTS, policies={"allowed_lateness_s": lateness})
    now = T0 + HORIZON + 1
    stream = sorted(samples, key=lambda x: x.ts)
    one = Engine(p)
    for state, ts, session in (("online", T0, "s1"), ("offline", gap[0], ""), ("online", gap[1], "s2")):
        one.connector_status(["m1"], state, ts, session)
    one.ingest(samples, now=now)
    with patch.object(core, "LOG_INITIAL", 4):
        inc = Engine(p)
    inc.origin = one.origin
    inc.connector_status(["m1"], "online", T0, "s1")
    status = [("offline", gap[0], ""), ("online", gap[1], "s2")]
    tick = 90.0
    waiting: list[int] = []
    k = 0
    for lo in np.arange(T0, now + tick, tick):
        hi = lo + tick
        while status and status[0][1] < hi:  # the connector's status messages, in their tick
            state, ts, session = status.pop(0)
            inc.connector_status(["m1"], state, ts, session)
        batch = []
        while k < len(stream) and stream[k].ts < hi:
            (waiting if k in held else batch).append(k)
            k += 1
        due = [i for i in waiting if stream[i].ts < lo - 30]  # held back by 30-120 s: late, not too late
        waiting = [i for i in waiting if i not in due]
        inc.ingest([stream[i] for i in batch + due], now=min(hi, now))
        inc.timeline(min(hi, now))
    inc.ingest([stream[i] for i in waiting], now=now)
    assert inc.stats.late_dropped == 0
    got, exp = inc.results(now), one.results(now)
    got += inc.range_results(now, ["m1", "m2", "m3"], [T0] * 3, [now] * 3)
    exp += one.range_results(now, ["m1", "m2", "m3"], [T0] * 3, [now] * 3)
    _same_results(got, exp, ("total", "reject", "oee", "stops", "state", "reason", "state_since", "product"))
    assert inc.state_intervals(now, T0) == one.state_intervals(now, T0)


@pytest.mark.parametrize("hold_view", [False, True])
def test_arena_growth_keeps_every_row(hold_view: bool) -> None:
    """The arena grows (and compacts) its arrays one at a time into fresh memory: every segment keeps its
    rows, the keys stay sorted, and a view held on an old array still reads its old rows."""
    a = core._Arena(3, 1000.0, 0.0, {"cum": (np.float64, 2), "flag": (np.int8, 1)}, init_cap=2)
    rng = np.random.default_rng(7)
    expect: dict[int, list[float]] = {0: [], 1: [], 2: []}
    held, held_vals, live = None, None, np.zeros(0, np.int64)
    for step in range(40):
        seg = np.sort(rng.integers(0, 3, 60))
        t = np.concatenate([np.sort(rng.uniform(step * 10.0, step * 10.0 + 9.0, int((seg == k).sum())))
                            for k in range(3)])
        a.append(seg, t, cum=np.stack([t, -t], axis=1), flag=(seg % 2).astype(np.int8))
        for k in range(3):
            expect[k].extend(t[seg == k].tolist())
        if hold_view and held is None:
            held = a.t[: int(a.size)]
            live = core._ranges(a.start, a.len)
            held_vals = held[live].copy()
    for k in range(3):
        rows = slice(int(a.start[k]), int(a.start[k] + a.len[k]))
        assert a.t[rows].tolist() == expect[k]
        assert a.cols["cum"][rows, 1].tolist() == [-x for x in expect[k]]
        assert (a.cols["flag"][rows] == k % 2).all()
    assert np.all(np.diff(a.key[: a.size]) >= 0)
    assert len(a.t) > 1024  # the arrays did grow
    if hold_view:
        assert held is not None and held_vals is not None
        assert held.base is not a.t  # the arrays were replaced, not resized under the view
        assert np.array_equal(held[live], held_vals)  # the view reads valid memory with the old rows


@settings(max_examples=_examples(60), deadline=None)
@given(n=st.integers(0, 40), chunk=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_log_drop_keeps_order_and_reports_new_positions(n: int, chunk: int, seed: int) -> None:
    """Dropping entries in place, a few at a time, keeps the others in order and says where each asked-for
    entry went (-1: dropped), as the plain list operation does."""
    rng = np.random.default_rng(seed)
    log = core._Log()
    t = rng.permutation(n).astype(np.float64)
    log.append(np.arange(n, dtype=np.int64), np.zeros(n, np.int8), t, t * 2, np.zeros(n, np.int8))
    log.rep[:n] = rng.random(n) < 0.5
    rep = log.rep[:n].copy()
    gone = rng.random(n) < 0.4
    pos = rng.integers(0, n, size=min(n, 7)) if n else np.zeros(0, np.int64)
    kept = [i for i in range(n) if not gone[i]]
    with patch.object(core, "REWRITE_CHUNK", chunk):
        new = log.drop(gone, pos)
    assert log.n == len(kept)
    assert log.t[: log.n].tolist() == t[kept].tolist() and log.v[: log.n].tolist() == (t[kept] * 2).tolist()
    assert log.rep[: log.n].tolist() == rep[kept].tolist()
    assert new.tolist() == [kept.index(p) if p in kept else -1 for p in pos.tolist()]
