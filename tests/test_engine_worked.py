"""The engine against published worked examples and every edge case of OEE-SEMANTICS.md section 3."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from oee_stream.bus import Sample
from oee_stream.engine import Engine
from tests.engine_fixtures import plant

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC).timestamp()  # a Monday, 06:00 UTC
MIN = 60.0


def S(sig: str, t: float, v: object, q: str = "good", m: str = "m1") -> Sample:
    return Sample(m, sig, t, v, q)  # type: ignore[arg-type]


def classic_plant():
    # Vorne/oee.com worked example: 480 min shift, 60 min of breaks, 47 min down, ideal cycle 1.0 s.
    return plant(shifts=[{"name": "day", "start": "06:00", "end": "14:00", "breaks": [
        {"start": "08:00", "end": "08:15"}, {"start": "10:00", "end": "10:30"}, {"start": "12:00", "end": "12:15"}]}])


def test_classic_shift_worked_example() -> None:
    eng = Engine(classic_plant())
    samples = [
        S("state", T0, 1), S("total", T0, 0), S("reject", T0, 0),
        S("state", T0 + 60 * MIN, 0), S("state", T0 + 107 * MIN, 1),  # 47 min breakdown
        S("total", T0 + 479 * MIN, 19271), S("reject", T0 + 479 * MIN, 423),
    ]
    end = T0 + 480 * MIN
    eng.ingest(samples, now=end)
    [r] = eng.range_results(end, ["m1"], [T0], [end])
    assert r.availability == pytest.approx(373 / 420)
    assert round(r.availability * 100, 2) == 88.81
    assert round(r.performance * 100, 2) == 86.11
    assert round(r.quality * 100, 2) == 97.80
    assert round(r.oee * 100, 2) == 74.79
    assert r.seconds["planned_excluded"] == pytest.approx(60 * MIN)
    assert r.seconds["unplanned_stop"] == pytest.approx(47 * MIN)
    assert r.stops == 1 and r.mtbf_s == pytest.approx(373 * MIN) and r.mttr_s == pytest.approx(47 * MIN)
    # Six big losses plus unknown add up to PPT minus fully productive time.
    lost = sum(r.six_big_losses_s.values()) + r.seconds["unknown"]
    assert lost == pytest.approx(r.ppt_s - (19271 - 423) * 1.0)
    # The shift window the engine emits by itself gives the same numbers.
    shift = [x for x in eng.results(end) if x.window == "shift" and x.entity == "m1"]
    assert shift and shift[-1].oee == pytest.approx(r.oee)
    assert r.downtime_by_reason_s == {"fault": pytest.approx(47 * MIN)}


def test_microstop_policies_move_only_the_split() -> None:
    base = [S("state", T0, 1), S("total", T0, 0), S("state", T0 + 100, 0), S("state", T0 + 130, 1),
            S("total", T0 + 590, 500)]
    now = T0 + 600
    res = {}
    for policy in ("performance", "availability"):
        eng = Engine(plant(policies={"microstops_as": policy, "microstop_threshold_s": 120}))
        eng.ingest(base, now=now)
        [res[policy]] = eng.range_results(now, ["m1"], [T0], [now])
    p, a = res["performance"], res["availability"]
    assert p.seconds["micro_stop"] == pytest.approx(30) and p.stops == 0
    assert p.availability == pytest.approx(1.0) and a.availability == pytest.approx(570 / 600)
    assert p.oee == pytest.approx(a.oee)


def test_zero_denominators_are_null_and_oee_zero_without_good() -> None:
    eng = Engine(plant(shifts=[{"name": "d", "start": "06:00", "end": "07:00"}]))
    eng.ingest([S("state", T0, 0)], now=T0 + 7200)
    [unsched] = eng.range_results(T0 + 7200, ["m1"], [T0 + 3600], [T0 + 7200])
    assert unsched.ppt_s == 0 and unsched.availability is None and unsched.oee is None
    assert unsched.teep == 0 and unsched.coverage is None
    [stopped] = eng.range_results(T0 + 7200, ["m1"], [T0], [T0 + 3600])
    assert stopped.ppt_s == pytest.approx(3600) and stopped.oee == 0.0 and stopped.quality is None
    assert stopped.performance is None


def test_unknown_time_lowers_availability_and_reports_coverage() -> None:
    samples = [S("state", T0, 1), S("state", T0 + 300, None, "bad"), S("state", T0 + 600, 1)]
    now = T0 + 1200
    include = Engine(plant())
    include.ingest(samples, now=now)
    [r] = include.range_results(now, ["m1"], [T0], [now])
    assert r.seconds["unknown"] == pytest.approx(300)
    assert r.availability == pytest.approx(900 / 1200) and r.coverage == pytest.approx(0.75)
    exclude = Engine(plant(policies={"unknown_policy": "exclude"}))
    exclude.ingest(samples, now=now)
    [x] = exclude.range_results(now, ["m1"], [T0], [now])
    assert x.availability == pytest.approx(1.0) and x.coverage == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("values", "width", "expected"),
    [
        ([100, 150, 20, 30], 32, 50 + 20 + 10),  # reset: counting restarts from 0
        ([65500, 65535, 10, 20], 16, 35 + 11 + 10),  # 16-bit rollover
        ([2**32 - 5, 3], 32, 8),  # 32-bit rollover
        ([1000, 10], 16, 10),  # decrease from low in the range: a reset, not a rollover
    ],
)
def test_counter_reset_and_rollover(values: list[int], width: int, expected: int) -> None:
    eng = Engine(plant(machines=[{"id": "m1", "state_table": "t", "counter_width": width,
                                  "products": {"a": {"ideal_cycle_time_s": 1.0}}}]))
    eng.ingest([S("state", T0, 1)] + [S("total", T0 + i, v) for i, v in enumerate(values)], now=T0 + 100)
    [r] = eng.range_results(T0 + 100, ["m1"], [T0], [T0 + 100])
    assert r.total == expected
    eng.results(T0 + 100)
    assert sum(eng.stats.counter_resets.values()) + sum(eng.stats.counter_rollovers.values()) >= 1


def test_duplicates_counted_once_and_late_and_future_samples() -> None:
    eng = Engine(plant(policies={"allowed_lateness_s": 300, "max_clock_skew_s": 60}))
    now = T0 + 1000
    eng.ingest([S("state", T0, 1), S("total", T0, 0), S("total", T0 + 10, 10)], now=now)
    rep = eng.ingest([S("total", T0 + 10, 10), S("total", T0 + 10, 10)], now=now)  # duplicates
    [r] = eng.range_results(now, ["m1"], [T0], [now])
    assert r.total == 10 and eng.stats.duplicates == 2
    eng.ingest([S("total", T0 + 900, 20)], now=now)
    late = eng.ingest([S("total", T0 + 700, 15), S("total", T0 + 100, 12)], now=now)
    assert late.late_dropped == 1 and late.late[0][1] == pytest.approx(800)
    future = eng.ingest([S("total", now + 61, 99)], now=now)
    assert future.rejected == [(0, "future timestamp beyond max_clock_skew_s")]
    [r] = eng.range_results(now, ["m1"], [T0], [now])
    assert r.total == 20  # the late-but-allowed sample was folded in; totals are unchanged by it
    assert rep.accepted == 2


@pytest.mark.parametrize("how", ["same batch", "later batch, older than the newest",
                                 "later batch, at the newest time", "later batch, after one more at that time"])
def test_repeat_of_a_reading_that_shares_its_time_with_another_is_a_duplicate(how: str) -> None:
    # Coarse PLC timestamps: two readings of one counter at the same source time (10 and 12). A redelivered
    # copy of the first is a duplicate even though the row before it is the second; taken as a new reading
    # it would be a counter decrease, i.e. a phantom reset that counts 10 parts again.
    eng = Engine(plant())
    now = T0 + 1000
    base = [S("state", T0, 1), S("total", T0, 0), S("total", T0 + 10, 10), S("total", T0 + 10, 12)]
    later = [S("total", T0 + 20, 20)]
    dup = [S("total", T0 + 10, 10)]
    batches = {"same batch": [base + later + dup],
               "later batch, older than the newest": [base + later, dup],
               "later batch, at the newest time": [base, dup, later],
               "later batch, after one more at that time": [base[:-1], base[-1:], dup, later]}[how]
    for b in batches:
        eng.ingest(b, now=now)
        eng.timeline(now)
    [r] = eng.range_results(now, ["m1"], [T0], [now])
    assert r.total == 20
    assert eng.stats.duplicates == 1 and not eng.stats.counter_resets


def test_late_sample_recomputes_the_window() -> None:
    eng = Engine(plant(policies={"microstop_threshold_s": 0}))
    now = T0 + 600
    eng.ingest([S("state", T0, 1), S("state", T0 + 400, 1)], now=now)
    [before] = eng.range_results(now, ["m1"], [T0], [now])
    eng.ingest([S("state", T0 + 200, 0)], now=now)  # a stop reported late
    [after] = eng.range_results(now, ["m1"], [T0], [now])
    assert before.availability == pytest.approx(1.0)
    assert after.availability == pytest.approx(400 / 600)


def test_product_change_splits_counts_and_rate_machine_yield() -> None:
    machines = [
        {"id": "m1", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0},
                                                        "b": {"ideal_cycle_time_s": 2.0}}},
        {"id": "f1", "kind": "rate", "unit": "t", "state_table": "t", "products": {"6063": {"ideal_rate_per_h": 36.0,
                                                                                           "code": 1}}},
    ]
    eng = Engine(plant(machines=machines))
    now = T0 + 1000
    eng.ingest([
        S("state", T0, 1), S("product", T0, "a"), S("total", T0, 0), S("total", T0 + 100, 100),
        S("product", T0 + 100, "b"), S("total", T0 + 500, 300),
        S("state", T0, 1, m="f1"), S("product", T0, 1, m="f1"), S("total", T0, 0.0, m="f1"),
        S("total", T0 + 900, 8.0, m="f1"), S("reject", T0, 0.0, m="f1"), S("reject", T0 + 900, 0.5, m="f1"),
        S("input", T0, 0.0, m="f1"), S("input", T0 + 900, 8.5, m="f1"),
    ], now=now)
    r, f = eng.range_results(now, ["m1", "f1"], [T0, T0], [now, now])
    assert r.net_run_time_s == pytest.approx(100 * 1.0 + 200 * 2.0)
    assert r.performance == pytest.approx(500 / 1000)
    assert f.net_run_time_s == pytest.approx(8.0 * 100)  # 36 t/h = 100 s per tonne
    assert f.quality == pytest.approx(7.5 / 8.0) and f.weight_yield == pytest.approx(7.5 / 8.5)


def test_performance_over_100_is_flagged_not_capped() -> None:
    eng = Engine(plant())
    now = T0 + 100
    eng.ingest([S("state", T0, 1), S("total", T0, 0), S("total", T0 + 50, 150)], now=now)
    [r] = eng.range_results(now, ["m1"], [T0], [now])
    assert r.performance == pytest.approx(1.5) and "performance_over_100" in r.flags


def test_dst_day_lengths_and_local_calendar() -> None:
    # Europe/Berlin, 2026-03-29 has 23 hours, 2026-10-25 has 25 hours.
    p = plant(timezone="Europe/Berlin")
    eng = Engine(p)
    spring = datetime(2026, 3, 29, 12, tzinfo=UTC).timestamp()
    eng.ingest([S("state", spring - 86400, 1)], now=spring + 86400)
    days = [r for r in eng.results(spring + 86400) if r.window == "day" and r.entity == "m1"]
    assert days
    from oee_stream.engine.calendar import local_floor, local_next
    d0 = local_floor(spring, "Europe/Berlin", "day")
    assert local_next(d0, "Europe/Berlin", "day") - d0 == 23 * 3600
    autumn = datetime(2026, 10, 25, 12, tzinfo=UTC).timestamp()
    d1 = local_floor(autumn, "Europe/Berlin", "day")
    assert local_next(d1, "Europe/Berlin", "day") - d1 == 25 * 3600


@pytest.mark.parametrize(("tz", "day", "short"), [
    ("Australia/Lord_Howe", (2026, 4, 5), ("01:30+1030", "02:00+1030")),  # back by 30 min at 02:00
    ("Australia/Lord_Howe", (2026, 10, 4), ("02:30+1100", "03:00+1100")),  # on by 30 min at 02:00
    ("Europe/Berlin", (2026, 3, 29), None), ("Europe/Berlin", (2026, 10, 25), None),
    ("Asia/Kathmandu", (2026, 3, 29), None),  # +05:45, no DST
])
def test_hour_windows_stay_on_local_hours_across_clock_changes(tz: str, day: tuple[int, int, int],
                                                               short: tuple[str, str] | None) -> None:
    from zoneinfo import ZoneInfo

    from oee_stream.engine.calendar import local_floor, local_next
    z = ZoneInfo(tz)
    lo = datetime(*day, tzinfo=UTC).timestamp() - 86400
    f, short_hours = local_floor(lo, tz, "hour"), []
    while f < lo + 2 * 86400:
        n = local_next(f, tz, "hour")
        assert 0 < n - f <= 3600
        # on local :00, or at the clock change
        assert (datetime.fromtimestamp(n, z).minute == 0
                or datetime.fromtimestamp(n - 1, z).utcoffset() != datetime.fromtimestamp(n, z).utcoffset())
        for x in (f, (f + n) / 2, n - 0.5):
            assert local_floor(x, tz, "hour") == f
        if n - f != 3600:
            short_hours.append((f"{datetime.fromtimestamp(f, z):%H:%M%z}", f"{datetime.fromtimestamp(n, z):%H:%M%z}"))
        f = n
    assert short_hours == ([short] if short else [])


def test_holiday_exception_makes_the_day_unscheduled() -> None:
    p = plant(shifts=[{"name": "d", "start": "06:00", "end": "14:00"}],
              exceptions=[{"date": "2026-03-02", "kind": "holiday"}])
    eng = Engine(p)
    eng.ingest([S("state", T0, 1)], now=T0 + 3600)
    [r] = eng.range_results(T0 + 3600, ["m1"], [T0], [T0 + 3600])
    assert r.seconds["unscheduled"] == pytest.approx(3600) and r.ppt_s == 0


def test_rollup_adds_time_classes_never_averages_ratios() -> None:
    machines = [
        {"id": "m1", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0}}},
        {"id": "m2", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0}}},
    ]
    eng = Engine(plant(machines=machines))
    now = T0 + 1000
    eng.ingest([S("state", T0, 1), S("total", T0, 0), S("total", T0 + 999, 900),
                S("state", T0, 1, m="m2"), S("state", T0 + 100, 0, m="m2"), S("total", T0, 0, m="m2"),
                S("total", T0 + 99, 50, m="m2"), S("reject", T0, 0, m="m2"), S("reject", T0 + 99, 25, m="m2")],
               now=now)
    res = eng.results(now)
    m1 = next(r for r in res if r.entity == "m1" and r.window == "1h")
    m2 = next(r for r in res if r.entity == "m2" and r.window == "1h")
    line = next(r for r in res if r.entity == "l1" and r.window == "1h")
    expected_a = (m1.run_time_s + m2.run_time_s) / (m1.ppt_s + m2.ppt_s)
    assert line.availability == pytest.approx(expected_a)
    assert line.quality == pytest.approx((m1.good + m2.good) / (m1.total + m2.total))
    assert line.quality != pytest.approx((m1.quality + m2.quality) / 2)
    assert line.total == m1.total + m2.total
    # all_time adds up like every time class: TEEP and utilization of the roll-up are those of the sums
    all_time = sum(m1.seconds.values()) + sum(m2.seconds.values())
    assert all_time == pytest.approx(2 * m1.ppt_s)
    for kind in ("line", "area", "site"):
        r = next(r for r in res if r.entity_kind == kind and r.window == "1h")
        assert r.utilization == pytest.approx((m1.ppt_s + m2.ppt_s) / all_time)
        assert r.teep == pytest.approx(r.oee * (m1.ppt_s + m2.ppt_s) / all_time)


def test_connector_offline_makes_time_unknown_and_restart_keeps_the_gap() -> None:
    eng = Engine(plant())
    eng.ingest([S("state", T0, 1)], now=T0 + 100)
    eng.connector_status(["m1"], "online", T0, session="a")
    eng.connector_status(["m1"], "offline", T0 + 100, session="a")
    [r] = eng.range_results(T0 + 200, ["m1"], [T0], [T0 + 200])
    assert r.seconds["unknown"] == pytest.approx(100)
    eng.connector_status(["m1"], "online", T0 + 200, session="b")  # restarted: the gap is lost
    # The new session reports the PLC's value with its original source time (older than the gap).
    eng.ingest([S("state", T0, 1)], now=T0 + 300)
    [r] = eng.range_results(T0 + 300, ["m1"], [T0], [T0 + 300])
    assert r.seconds["unknown"] == pytest.approx(100) and r.seconds["running"] == pytest.approx(200)
    # A change reported by the new session takes effect at its own time.
    eng.ingest([S("state", T0 + 250, 0)], now=T0 + 300)
    [r] = eng.range_results(T0 + 300, ["m1"], [T0], [T0 + 300])
    assert r.seconds["running"] == pytest.approx(150) and r.seconds["micro_stop"] == pytest.approx(50)


def test_restart_after_a_retained_last_will_keeps_the_gap() -> None:
    # The engine starts while the connector is down: the first status it sees is the retained last will
    # of session a. The connector then restarts as session b: the gap is lost data, unknown.
    eng = Engine(plant())
    eng.ingest([S("state", T0, 1)], now=T0 + 50)
    eng.connector_status(["m1"], "offline", T0 + 100, session="a")
    eng.connector_status(["m1"], "online", T0 + 400, session="b")
    [r] = eng.range_results(T0 + 600, ["m1"], [T0], [T0 + 600])
    assert r.seconds["unknown"] == pytest.approx(300) and r.seconds["running"] == pytest.approx(300)
    assert r.coverage == pytest.approx(0.5)


def test_unmapped_state_code_is_unknown() -> None:
    eng = Engine(plant())
    eng.ingest([S("state", T0, 1), S("state", T0 + 50, 77)], now=T0 + 100)
    [r] = eng.range_results(T0 + 100, ["m1"], [T0], [T0 + 100])
    assert r.seconds["unknown"] == pytest.approx(50)
    res = eng.results(T0 + 100)
    assert next(x for x in res if x.entity == "m1").reason == "unmapped state code"


def test_no_count_for_n_seconds_means_stopped() -> None:
    p = plant(machines=[{"id": "m1", "state_source": "counts", "no_count_stop_after_s": 30,
                         "products": {"a": {"ideal_cycle_time_s": 5}}}])
    eng = Engine(p)
    counts = [S("total", T0 + i * 5, i) for i in range(20)] + [S("total", T0 + 200 + i * 5, 20 + i) for i in range(10)]
    eng.ingest(counts, now=T0 + 400)
    [r] = eng.range_results(T0 + 400, ["m1"], [T0], [T0 + 400])
    # running from the first increment; stopped 30 s after the last count of each burst
    assert r.seconds["running"] == pytest.approx(120 + 75)
    assert r.seconds["micro_stop"] == pytest.approx(75)  # 95+30 .. 200: shorter than 120 s
    assert r.seconds["unplanned_stop"] == pytest.approx(400 - 275) and r.stops == 1
    assert r.reason == "no count"


def test_impossible_telemetry_is_rejected_with_its_reason() -> None:
    eng = Engine(plant(machines=[{"id": "m1", "state_table": "t", "counter_width": 16,
                                  "products": {"a": {"ideal_cycle_time_s": 1.0}}}]))
    rep = eng.ingest([S("total", T0, 70000), S("total", T0, -1), S("state", T0, 1.5), S("product", T0, "zz"),
                      S("nonsense", T0, 1), S("total", T0, float("nan")), S("total", T0, 5, m="m9")], now=T0 + 10)
    reasons = dict(rep.rejected)
    assert reasons[0].startswith("counter value exceeds")
    assert reasons[1] == "negative counter value"
    assert reasons[2] == "state code is not an integer"
    assert reasons[3].startswith("unknown product 'zz'") and "['a']" in reasons[3]
    assert reasons[4] == "unknown signal" and reasons[5] == "value is not a finite number"
    assert reasons[6] == "unknown machine" and rep.accepted == 0


def test_state_intervals_merge_rows_and_leave_the_last_open() -> None:
    eng = Engine(plant())
    eng.ingest([S("state", T0, 1), S("state", T0 + 10, 1), S("state", T0 + 20, 0), S("state", T0 + 500, 1)],
               now=T0 + 600)
    iv = [x for x in eng.state_intervals(T0 + 600, since=T0) if x[3] != "unknown"]
    assert iv == [("m1", T0, T0 + 20, "running", None), ("m1", T0 + 20, T0 + 500, "unplanned_stop", "fault"),
                  ("m1", T0 + 500, None, "running", None)]


def test_open_stop_is_micro_until_it_passes_the_threshold_across_ticks() -> None:
    # An open stop of two reasons (fault, then starved) is one stop; while shorter than the threshold it
    # is micro, measured up to now; it turns unplanned (and counts as a stop) once it passes the threshold.
    eng = Engine(plant(policies={"microstop_threshold_s": 120}))
    eng.ingest([S("state", T0, 1), S("state", T0 + 1000, 0)], now=T0 + 1030)
    eng.timeline(T0 + 1030)
    eng.ingest([S("state", T0 + 1040, 3)], now=T0 + 1050)
    [r] = eng.range_results(T0 + 1100, ["m1"], [T0 + 1020], [T0 + 1100])
    assert r.seconds["micro_stop"] == pytest.approx(80) and r.seconds["unplanned_stop"] == 0 and r.stops == 0
    assert r.downtime_by_reason_s == {"fault": pytest.approx(20), "starved": pytest.approx(60)}
    [r] = eng.range_results(T0 + 1200, ["m1"], [T0 + 990], [T0 + 1200])
    assert r.seconds["micro_stop"] == 0 and r.seconds["unplanned_stop"] == pytest.approx(200) and r.stops == 1
    res = [x for x in eng.results(T0 + 1200) if x.entity == "m1" and x.window == "1h"]
    assert res[0].state == "unplanned_stop" and res[0].reason == "starved" and res[0].state_since == T0 + 1040
    # ended after 150 s in all: a closed stop keeps its class
    eng.ingest([S("state", T0 + 1150, 1)], now=T0 + 1300)
    [r] = eng.range_results(T0 + 1300, ["m1"], [T0 + 990], [T0 + 1300])
    assert r.seconds["unplanned_stop"] == pytest.approx(150) and r.stops == 1


def test_stale_signal_tail_is_unknown_until_data_comes_back() -> None:
    eng = Engine(plant(policies={"stale_after_s": 100}))
    eng.ingest([S("state", T0, 1)], now=T0 + 10)
    [r] = eng.range_results(T0 + 300, ["m1"], [T0], [T0 + 300])
    assert r.seconds["running"] == pytest.approx(100) and r.seconds["unknown"] == pytest.approx(200)
    assert next(x for x in eng.results(T0 + 300) if x.entity == "m1").reason == "stale signal"
    eng.ingest([S("state", T0 + 250, 1)], now=T0 + 300)
    [r] = eng.range_results(T0 + 300, ["m1"], [T0], [T0 + 300])
    assert r.seconds["running"] == pytest.approx(300)


def test_counter_first_sample_is_a_baseline_for_rejects_as_for_totals() -> None:
    # Start-up: totals flow; the reject counter's value at connector start carries the source time of the
    # last reject, hours ago (beyond allowed_lateness_s). It is kept as the reject baseline, so the first
    # reject after start-up is counted, as the first total increment is.
    eng = Engine(plant(policies={"allowed_lateness_s": 300}))
    now = T0 + 3600
    eng.ingest([S("state", T0, 1), S("total", T0, 1000), S("total", T0 + 600, 1600)], now=T0 + 601)
    rep = eng.ingest([S("reject", T0 - 5 * 3600, 40), S("reject", T0 - 4 * 3600, 41)], now=T0 + 601)
    assert rep.late_dropped == 1 and rep.accepted == 1  # the newest one is the baseline
    eng.ingest([S("total", T0 + 1200, 2200), S("reject", T0 + 1200, 43)], now=now)
    [r] = eng.range_results(now, ["m1"], [T0], [now])
    assert r.total == 1200 and r.reject == 2
    # once a series has a baseline, a late sample is late again
    assert eng.ingest([S("reject", T0 - 3 * 3600, 42)], now=now).late_dropped == 1
    # with a timely sample of the new series in the same batch, that one is the baseline
    rep = eng.ingest([S("input", T0 - 5 * 3600, 7), S("input", T0 + 1300, 9)], now=now)
    assert rep.late_dropped == 1 and rep.accepted == 1


def test_good_counter_reported_directly() -> None:
    # A PLC with total and good counters (no reject counter): rejects are total - good.
    machines = [{"id": "m1", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0}}},
                {"id": "m2", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0}}},
                {"id": "m3", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0}}}]
    eng = Engine(plant(machines=machines))
    now = T0 + 1000
    eng.ingest([S("state", T0, 1), S("total", T0, 0), S("good", T0, 0), S("total", T0 + 900, 500),
                S("good", T0 + 900, 480),
                # good and reject, no total: total is good + reject
                S("state", T0, 1, m="m2"), S("good", T0, 0, m="m2"), S("reject", T0, 0, m="m2"),
                S("good", T0 + 900, 300, m="m2"), S("reject", T0 + 900, 10, m="m2"),
                # all three: the semantics' good = total - reject, the PLC's good is informational
                S("state", T0, 1, m="m3"), S("total", T0, 0, m="m3"), S("reject", T0, 0, m="m3"),
                S("good", T0, 0, m="m3"), S("total", T0 + 900, 100, m="m3"), S("reject", T0 + 900, 5, m="m3"),
                S("good", T0 + 900, 97, m="m3")], now=now)
    r1, r2, r3 = eng.range_results(now, ["m1", "m2", "m3"], [T0] * 3, [now] * 3)
    assert (r1.total, r1.reject, r1.good) == (500, 20, 480) and r1.quality == pytest.approx(0.96)
    assert r1.six_big_losses_s["production_rejects"] == pytest.approx(20.0)
    assert (r2.total, r2.reject, r2.good) == (310, 10, 300) and r2.net_run_time_s == pytest.approx(310.0)
    assert (r3.total, r3.reject, r3.good) == (100, 5, 95)


def test_startup_rejects_are_a_part_of_the_rejects() -> None:
    # startup_reject counts the start-up scrap, a subset of reject: the six big losses split the reject loss
    # into production and start-up rejects; counts, quality and OEE are those of the rejects alone.
    machines = [{"id": "m1", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0},
                                                              "b": {"ideal_cycle_time_s": 2.0}}},
                {"id": "m2", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0}}},
                {"id": "m3", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0}}}]
    eng = Engine(plant(machines=machines))
    now = T0 + 1800
    eng.ingest([
        # m1: startup_reject's first sample (7) is its baseline, like any counter's
        S("state", T0, 1), S("product", T0, "a"), S("total", T0, 0), S("reject", T0, 0), S("startup_reject", T0, 7),
        S("total", T0 + 300, 200), S("reject", T0 + 300, 12), S("startup_reject", T0 + 300, 12),  # 5 of a: 5 s
        S("product", T0 + 600, "b"),
        S("total", T0 + 1200, 500), S("reject", T0 + 1200, 20), S("startup_reject", T0 + 1200, 15),  # 3 of b: 6 s
        S("reject", T0 + 1500, 22), S("startup_reject", T0 + 1500, 2),  # a reset: 2 of b, 4 s
        # m2, misconfigured: more start-up rejects than rejects
        S("state", T0, 1, m="m2"), S("total", T0, 0, m="m2"), S("reject", T0, 0, m="m2"),
        S("startup_reject", T0, 0, m="m2"), S("total", T0 + 300, 100, m="m2"), S("reject", T0 + 300, 4, m="m2"),
        S("startup_reject", T0 + 300, 10, m="m2"), S("total", T0 + 900, 200, m="m2"),
        S("reject", T0 + 900, 10, m="m2"),
        # m3 sends no startup_reject: exactly as before, every reject is a production reject
        S("state", T0, 1, m="m3"), S("total", T0, 0, m="m3"), S("reject", T0, 0, m="m3"),
        S("total", T0 + 900, 100, m="m3"), S("reject", T0 + 900, 5, m="m3"),
    ], now=now)
    r1, first, r2, r2a, r2b, r3 = eng.range_results(
        now, ["m1", "m1", "m2", "m2", "m2", "m3"], [T0, T0, T0, T0, T0 + 600, T0],
        [now, T0 + 600, now, T0 + 600, now, now])
    # m1: rejects 12 of a + 10 of b = 22 (12 s + 20 s); start-up 5 of a + 5 of b (5 s + 10 s)
    assert (r1.total, r1.reject, r1.good) == (500, 22, 478) and r1.quality == pytest.approx(478 / 500)
    assert r1.net_run_time_s == pytest.approx(200 + 300 * 2.0)
    assert r1.six_big_losses_s["startup_rejects"] == pytest.approx(15.0)
    assert r1.six_big_losses_s["production_rejects"] == pytest.approx(17.0)
    assert r1.six_big_losses_s["slow_cycles"] == pytest.approx(1800 - 800)
    # the six losses (+ unknown) still add up to PPT - fully productive time (800 - 32 s)
    assert sum(r1.six_big_losses_s.values()) + r1.seconds["unknown"] == pytest.approx(1800 - 768)
    assert r1.oee == pytest.approx(800 / 1800 * 478 / 500)
    assert first.six_big_losses_s["startup_rejects"] == pytest.approx(5.0)
    assert first.six_big_losses_s["production_rejects"] == pytest.approx(7.0)
    # m2: 10 start-up rejects against 4 rejects in [T0, T0+600): clamped, all 4 are start-up rejects; over the
    # whole window 10 against 10: all start-up; after T0+600 no start-up rejects: 6 production rejects
    assert (r2.reject, r2.good) == (10, 190)
    assert r2.six_big_losses_s["startup_rejects"] == pytest.approx(10.0)
    assert r2.six_big_losses_s["production_rejects"] == pytest.approx(0.0)
    assert r2a.six_big_losses_s["startup_rejects"] == pytest.approx(4.0)
    assert r2a.six_big_losses_s["production_rejects"] == pytest.approx(0.0)
    assert r2b.six_big_losses_s["startup_rejects"] == pytest.approx(0.0)
    assert r2b.six_big_losses_s["production_rejects"] == pytest.approx(6.0)
    assert r3.six_big_losses_s["startup_rejects"] == 0.0
    assert r3.six_big_losses_s["production_rejects"] == pytest.approx(5.0)
    # a line adds its machines' (clamped) losses
    [line] = [x for x in eng.results(now) if x.entity == "l1" and x.window == "1h"]
    assert line.reject == 37
    assert line.six_big_losses_s["startup_rejects"] == pytest.approx(15.0 + 10.0)
    assert line.six_big_losses_s["production_rejects"] == pytest.approx(17.0 + 0.0 + 5.0)


def test_operator_reasons_replace_the_reason_of_stop_time_only() -> None:
    eng = Engine(classic_plant())
    samples = [S("state", T0, 1), S("state", T0 + 60 * MIN, 0), S("state", T0 + 107 * MIN, 1)]
    end = T0 + 480 * MIN
    eng.ingest(samples, now=end)
    # the operator says the first 30 min of the breakdown were a die change; the event he edited
    # overlaps running time too, which stays running
    eng.set_reason_overrides(["m1", "nope"], [T0 + 50 * MIN, T0], [T0 + 90 * MIN, T0 + 1], ["die change", "x"])
    [r] = eng.range_results(end, ["m1"], [T0], [end])
    assert r.downtime_by_reason_s == {"die change": pytest.approx(30 * MIN), "fault": pytest.approx(17 * MIN)}
    assert r.seconds["running"] == pytest.approx(373 * MIN)


def test_late_first_state_sample_is_the_initial_state_from_when_it_is_accepted() -> None:
    # Start-up: counters flow; the state signal's value at connector start carries the source time of the
    # last state change, hours ago (beyond allowed_lateness_s). It is the machine's current state: kept,
    # and in force from the machine's newest sample time when it is accepted; the time before stays unknown.
    eng = Engine(plant(policies={"allowed_lateness_s": 300}))
    eng.ingest([S("total", T0, 1000), S("total", T0 + 600, 1600)], now=T0 + 601)
    rep = eng.ingest([S("state", T0 - 5 * 3600, 0), S("state", T0 - 4 * 3600, 1)], now=T0 + 601)
    assert rep.late_dropped == 1 and rep.accepted == 1 and rep.rejected == []  # the newest one is kept
    now = T0 + 1200
    [r] = eng.range_results(now, ["m1"], [T0], [now])
    assert r.seconds["running"] == pytest.approx(600) and r.seconds["unknown"] == pytest.approx(600)
    assert r.total == 600
    # once the machine has a state, a late state sample is late again
    rep = eng.ingest([S("state", T0 - 3600, 0)], now=now)
    assert rep.late_dropped == 1 and rep.accepted == 0
    # with a timely state sample in the same batch, that one sets the state and the late one is dropped
    eng2 = Engine(plant(policies={"allowed_lateness_s": 300}))
    eng2.ingest([S("total", T0, 1000), S("total", T0 + 600, 1600)], now=T0 + 601)
    rep = eng2.ingest([S("state", T0 - 5 * 3600, 0), S("state", T0 + 400, 1)], now=T0 + 601)
    assert rep.late_dropped == 1 and rep.accepted == 1
    [r2] = eng2.range_results(now, ["m1"], [T0], [now])
    assert r2.seconds["running"] == pytest.approx(800) and r2.seconds["unknown"] == pytest.approx(400)


def test_machine_whose_data_lags_behind_now() -> None:
    # m1's data arrives 20-40 min behind now (a slow gateway, a spool after a broker outage); m2 is live.
    machines = [{"id": "m1", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0}}},
                {"id": "m2", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0}}}]
    eng = Engine(plant(machines=machines, policies={"allowed_lateness_s": 300}))
    eng.ingest([S("state", T0, 1), S("total", T0, 0), S("state", T0, 1, m="m2"), S("total", T0, 0, m="m2")],
               now=T0 + 1)
    now = T0 + 3600
    eng.ingest([S("total", now - 10, 3590, m="m2"), S("total", T0 + 1200, 1200)], now=now)
    # m1's windows at now: its last state holds up to now, its counts are those that arrived
    [r] = eng.range_results(now, ["m1"], [T0], [now])
    assert r.seconds["running"] == pytest.approx(3600) and r.total == 1200
    # the rest arrives in order, far behind now: not late (lateness is measured against the machine's own
    # newest sample), derived, and every window over it is exact again
    rep = eng.ingest([S("state", T0 + 1800, 0), S("state", T0 + 2400, 1), S("total", T0 + 2400, 1800)], now=now)
    assert rep.late_dropped == 0 and rep.accepted == 3
    [r] = eng.range_results(now, ["m1"], [T0], [now])
    assert r.seconds["unplanned_stop"] == pytest.approx(600) and r.seconds["running"] == pytest.approx(3000)
    assert r.total == 1800
    # the hour it lies in is re-emitted while it touches the lateness horizon (now - allowed_lateness_s)
    hour = [x for x in eng.results(now) if x.entity == "m1" and x.window == "hour" and x.start == T0]
    assert hour and hour[0].seconds["unplanned_stop"] == pytest.approx(600)


def test_machines_on_different_calendars() -> None:
    # m1 works around the clock, m2 only 06:00-07:00: the same samples give each its own calendar's time.
    p = plant(machines=[{"id": "m1", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0}}},
                        {"id": "m2", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0}}}])
    data = p.model_dump(by_alias=True, exclude_unset=True)
    data["calendars"]["short"] = {"timezone": "UTC", "shifts": [{"name": "early", "start": "06:00", "end": "07:00"}]}
    data["lines"][0]["machines"][1]["calendar"] = "short"
    p = type(p).model_validate(data)
    eng = Engine(p)
    now = T0 + 2 * 3600
    eng.ingest([S("state", T0, 1), S("state", T0, 1, m="m2"), S("state", T0 + 1800, 0),
                S("state", T0 + 1800, 0, m="m2")], now=now)
    r1, r2 = eng.range_results(now, ["m1", "m2"], [T0] * 2, [now] * 2)
    assert r1.seconds["running"] == pytest.approx(1800) and r1.seconds["unplanned_stop"] == pytest.approx(5400)
    assert r2.seconds["running"] == pytest.approx(1800) and r2.seconds["unplanned_stop"] == pytest.approx(1800)
    assert r2.seconds["unscheduled"] == pytest.approx(3600) and r1.seconds["unscheduled"] == 0
    cur = {x.entity: x for x in eng.results(now) if x.entity in ("m1", "m2") and x.window == "15m"}
    assert cur["m1"].state == "unplanned_stop" and cur["m2"].state == "unscheduled"
    assert cur["m2"].state_since == T0 + 3600
