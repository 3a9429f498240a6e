"""Read API: plant tree, entity KPIs (any kind, week, range), series, losses, shift report, downtime, CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator

import httpx
import pytest

from oee_stream.config import Plant
from oee_stream.engine.result import iso
from oee_stream.storage.writer import StateInterval, StorageWriter
from test_api import _client, api_settings
from test_storage import T0, make_result

SHIFT0 = T0 - 3 * 3600  # 2025-06-15T12:00Z = 14:00 Berlin, start of the late shift


@pytest.fixture(params=["db", "cache"])
async def client(request: pytest.FixtureRequest, db: str, plant: Plant) -> AsyncIterator[httpx.AsyncClient]:
    from oee_stream.api import create_app

    app = create_app(api_settings(db, plant, request.param, anonymous_read=True))
    async for c in _client(app, refresh_cache=request.param == "cache"):
        yield c


def kind(r, k: str):  # type: ignore[no-untyped-def]
    r.entity_kind = k
    return r


async def write(db: str, results=(), intervals=()) -> None:  # type: ignore[no-untyped-def]
    async with StorageWriter(db) as w:
        await w.write_results(list(results))
        await w.write_state_intervals(list(intervals))
        await w.flush(10)


async def test_plant_tree_has_states_and_kpis_per_level(client: httpx.AsyncClient, db: str) -> None:
    await write(db, [
        make_result("press-1", "15m", T0, 900, total=300, good=290),
        kind(make_result("extrusion", "15m", T0, 900, total=300, good=290), "line"),
        kind(make_result("extrusion", "15m", T0, 900, total=999, good=999), "area"),
        kind(make_result("casthouse", "shift", T0, 8 * 3600, total=50, good=50), "line"),
        kind(make_result("alu-works", "15m", T0, 900, total=1000, good=990), "site"),
    ], [StateInterval("caster-1", T0, None, "unplanned_stop", "metal leak", "plc")])
    r = await client.get("/api/v1/plant", params={"tz": "plant"})
    assert r.status_code == 200, r.text
    site = r.json()["site"]
    assert site["id"] == "alu-works" and site["timezone"] == "Europe/Berlin"
    assert site["kpis"]["15m"]["total"] == 1000
    assert [a["id"] for a in site["areas"]] == ["casthouse", "extrusion"]
    ext = site["areas"][1]
    assert ext["kpis"]["15m"]["total"] == 999  # the area row, not the line row of the same id
    assert ext["lines"][0]["kpis"]["15m"]["total"] == 300
    assert ext["lines"][0]["machines"][0]["id"] == "press-1"
    cast = site["areas"][0]["lines"][0]
    assert cast["constraint"] == "caster-1" and cast["state"] == "unplanned_stop"
    caster = cast["machines"][1]
    assert caster["reason"] == "metal leak" and caster["state_age_s"] > 0
    assert caster["state_since"].endswith("+02:00")  # plant zone, summer time
    assert site["state_counts"] == {"no_data": 2, "unplanned_stop": 1}
    assert (await client.get("/api/v1/plant", params={"windows": "15m,nope"})).status_code == 422


async def test_entity_oee_for_every_kind_and_ambiguous_ids(client: httpx.AsyncClient, db: str) -> None:
    await write(db, [
        kind(make_result("extrusion", "1h", T0, total=100, good=100), "line"),
        kind(make_result("extrusion", "1h", T0, total=200, good=100), "area"),
        kind(make_result("alu-works", "hour", T0, total=100, good=90), "site"),
        kind(make_result("alu-works", "hour", T0 + 3600, seconds={"running": 1800, "unplanned_stop": 1800},
                         total=500, good=500), "site"),
    ])
    r = await client.get("/api/v1/entities/extrusion/oee", params={"window": "1h"})
    assert r.status_code == 422 and "kind=line" in r.json()["detail"]
    r = await client.get("/api/v1/entities/extrusion/oee", params={"window": "1h", "kind": "area"})
    assert r.status_code == 200 and r.json()["total"] == 200 and r.json()["entity_kind"] == "area"
    r = await client.get("/api/v1/entities/casthouse/oee", params={"window": "1h", "kind": "line"})
    assert r.status_code == 404 and "no stored" in r.json()["detail"]
    r = await client.get("/api/v1/entities/nowhere/oee", params={"window": "1h"})
    assert r.status_code == 404 and "press-1" in r.json()["detail"]
    # Range roll-up of the site's hours, in plant-local time without offsets.
    r = await client.get("/api/v1/entities/alu-works/oee",
                         params={"start": "2025-06-15T17:00", "end": "2025-06-15T19:00", "tz": "plant"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["records"] == 2 and body["entity_kind"] == "site"
    ppt, net, good, total = 7200.0, 2 * 600, 590.0, 600.0
    assert body["oee"] == pytest.approx(net / ppt * good / total)
    assert body["start"] == "2025-06-15T17:00:00+02:00"
    # Naive bounds without tz are refused; a bare date is local midnight with tz.
    r = await client.get("/api/v1/entities/alu-works/oee", params={"start": "2025-06-15T17:00", "end": "2025-06-15T19:00"})
    assert r.status_code == 422 and "offset" in r.json()["detail"]
    r = await client.get("/api/v1/entities/alu-works/oee",
                         params={"start": "2025-06-15", "end": "2025-06-16", "tz": "UTC"})
    assert r.json()["records"] == 2 and r.json()["start"] == "2025-06-15T00:00:00Z"
    # An unencoded "+" arrives as a space and is still understood.
    r = await client.get("/api/v1/entities/alu-works/oee?start=2025-06-15T17:00:00+02:00&end=2025-06-15T19:00:00+02:00")
    assert r.status_code == 200 and r.json()["records"] == 2
    assert (await client.get("/api/v1/entities/press-1/oee", params={"window": "1h", "tz": "Mars/Base"})).status_code == 422


async def test_week_is_rolled_up_from_this_weeks_hours(client: httpx.AsyncClient, db: str) -> None:
    import time

    from oee_stream.engine.calendar import local_floor

    now_hour = local_floor(time.time(), "Europe/Berlin", "hour")
    week = local_floor(time.time(), "Europe/Berlin", "week")
    past = int((now_hour - week) // 3600)  # hours of this week that are over
    hours = [make_result("press-1", "hour", week, total=1000, good=900),
             make_result("press-1", "hour", week - 3600, total=5, good=5)]  # last week: not added
    hours += [make_result("press-1", "hour", week + i * 3600, total=1, good=1) for i in range(1, past)]
    if now_hour > week:
        hours.append(make_result("press-1", "hour", now_hour, total=100, good=100))
    await write(db, hours)
    r = await client.get("/api/v1/machines/press-1/oee", params={"window": "week"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["window"] == "week"
    assert body["total"] == (1100 + max(0, past - 1) if now_hour > week else 1000)
    # Every hour that is over is stored: the rest of the week is not "missing".
    assert body["start"] == iso(week) and "partial_range" not in body["flags"]


async def test_week_flags_past_hours_that_are_missing(client: httpx.AsyncClient, db: str) -> None:
    import time

    from oee_stream.engine.calendar import local_floor

    now_hour = local_floor(time.time(), "Europe/Berlin", "hour")
    week = local_floor(time.time(), "Europe/Berlin", "week")
    if now_hour - week < 2 * 3600:
        pytest.skip("this week has no hour between its first and the current one yet")
    # The first hour and the current one are stored; the hours between are over and missing.
    await write(db, [make_result("press-1", "hour", week, total=10, good=10),
                     make_result("press-1", "hour", now_hour, total=10, good=10)])
    body = (await client.get("/api/v1/machines/press-1/oee", params={"window": "week"})).json()
    assert body["records"] == 2 and "partial_range" in body["flags"], body["flags"]


async def test_range_without_data_has_null_config_hash(client: httpx.AsyncClient, db: str) -> None:
    r = await client.get("/api/v1/machines/press-1/oee", params={"start": iso(T0), "end": iso(T0 + 7200)})
    assert r.status_code == 200, r.text
    assert r.json()["config_hash"] is None and r.json()["flags"] == ["no_data"]
    hour = make_result("press-1", "hour", T0, total=10, good=10)
    hour.config_hash = "3c1f00aa"
    await write(db, [hour])
    r = await client.get("/api/v1/machines/press-1/oee", params={"start": iso(T0), "end": iso(T0 + 3600)})
    assert r.json()["config_hash"] == "3c1f00aa"


async def test_series_pages_through_hours_shifts_and_days(client: httpx.AsyncClient, db: str) -> None:
    await write(db, [make_result("press-1", "hour", T0 + i * 3600, total=i, good=i) for i in range(5)]
                + [make_result("press-1", "shift", SHIFT0, 8 * 3600, total=77, good=70, shift="late")])
    url = "/api/v1/entities/press-1/series"
    params = {"start": iso(T0), "end": iso(T0 + 5 * 3600), "bucket": "hour", "limit": 2}
    r = await client.get(url, params=params)
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] == 5 and page["next_offset"] == 2 and [i["total"] for i in page["items"]] == [0, 1]
    r = await client.get(url, params={**params, "offset": 4})
    assert [i["total"] for i in r.json()["items"]] == [4] and r.json()["next_offset"] is None
    r = await client.get(url, params={"start": iso(SHIFT0), "end": iso(SHIFT0 + 1), "bucket": "shift", "tz": "plant"})
    item = r.json()["items"][0]
    assert item["shift"] == "late" and item["start"] == "2025-06-15T14:00:00+02:00"
    assert (await client.get(url, params={**params, "bucket": "minute"})).status_code == 422
    assert (await client.get(url, params={**params, "limit": 0})).status_code == 422


async def test_losses_pareto_sorted_descending(client: httpx.AsyncClient, db: str) -> None:
    a = make_result("press-1", "hour", T0, seconds={"running": 2400, "unplanned_stop": 900, "planned_stop": 300},
                    total=1000, good=950)
    b = make_result("caster-1", "hour", T0, seconds={"running": 3000, "unplanned_stop": 600}, total=10, good=10)
    site = kind(make_result("alu-works", "hour", T0, seconds={"running": 3000, "unplanned_stop": 600},
                            total=1000, good=950), "site")
    await write(db, [a, b, site], [
        StateInterval("press-1", T0 - 100, T0 + 600, "unplanned_stop", "die failure", "plc"),  # 600 s inside
        StateInterval("press-1", T0 + 600, T0 + 700, "running"),
        StateInterval("press-1", T0 + 700, T0 + 800, "unplanned_stop", "die failure", "plc"),
        StateInterval("press-1", T0 + 800, T0 + 1000, "micro_stop", "billet starved", "rule"),
        StateInterval("press-1", T0 + 1000, T0 + 1300, "planned_stop", "die change", "plc"),
        StateInterval("press-1", T0 + 1300, T0 + 3500, "running"),
        StateInterval("press-1", T0 + 3500, T0 + 3700, "unknown"),  # not a stop
        StateInterval("caster-1", T0 + 3000, T0 + 3900, "unplanned_stop", "metal leak", "plc"),  # 600 s inside
    ])
    r = await client.get("/api/v1/entities/press-1/losses", params={"start": iso(T0), "end": iso(T0 + 3600)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["name"] for x in body["downtime_by_reason"]] == ["die failure", "die change", "billet starved"]
    assert body["downtime_by_reason"][0]["seconds"] == pytest.approx(700)
    assert body["downtime_by_reason"][0]["share"] == pytest.approx(700 / 1200)
    six = {x["name"]: x["seconds"] for x in body["six_big_losses"]}
    assert six["unplanned_stops"] == 900 and six["planned_stops"] == 300
    secs = [x["seconds"] for x in body["six_big_losses"]]
    assert secs == sorted(secs, reverse=True)
    r = await client.get("/api/v1/entities/alu-works/losses", params={"start": iso(T0), "end": iso(T0 + 3600)})
    reasons = {x["name"]: x["seconds"] for x in r.json()["downtime_by_reason"]}
    assert reasons == pytest.approx({"die failure": 700, "metal leak": 600, "die change": 300, "billet starved": 200})


async def test_losses_pareto_uses_the_operators_reasons(client: httpx.AsyncClient, db: str) -> None:
    """The PLC said `unspecified`; the operator coded the stop, then split another one: the Pareto shows
    the final reasons, also after the engine re-emitted the intervals with its own reasons."""
    from datetime import UTC, datetime

    import psycopg

    from oee_stream.storage import edits

    hour = make_result("press-1", "hour", T0, seconds={"running": 2700, "unplanned_stop": 900}, total=10, good=10)
    hour.downtime_by_reason_s = {"unspecified": 900}  # what the engine saw when it computed the hour
    stops = [StateInterval("press-1", T0 + 100, T0 + 400, "unplanned_stop", None, "plc"),
             StateInterval("press-1", T0 + 1000, T0 + 1600, "unplanned_stop", "unspecified", "rule")]
    await write(db, [hour], stops)

    def at(t: float) -> datetime:
        return datetime.fromtimestamp(t, UTC)

    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        await edits.set_reason(conn, "op", "press-1", at(T0 + 100), reason="die failure",
                               category="unplanned_stop", comment=None)
        await edits.split(conn, "op", "press-1", at(T0 + 1000), at(T0 + 1200),
                          first={"reason": "billet starved", "category": "unplanned_stop", "comment": None},
                          second={"reason": "die failure", "category": "unplanned_stop", "comment": None})
    await write(db, [], stops)  # the engine re-emits its view: operator reasons and the split stay
    r = await client.get("/api/v1/entities/press-1/losses", params={"start": iso(T0), "end": iso(T0 + 3600)})
    assert r.status_code == 200, r.text
    got = {x["name"]: x["seconds"] for x in r.json()["downtime_by_reason"]}
    assert got == pytest.approx({"die failure": 300 + 400, "billet starved": 200})
    r = await client.get("/api/v1/entities/extrusion/losses",
                         params={"start": iso(T0), "end": iso(T0 + 3600), "kind": "line"})
    assert {x["name"] for x in r.json()["downtime_by_reason"]} == {"die failure", "billet starved"}


async def test_shift_report_targets_from_calendar_and_ideal_speed(client: httpx.AsyncClient, db: str) -> None:
    await write(db, [
        make_result("press-1", "hour", SHIFT0, total=1500, good=1450, product="6063-T5"),
        make_result("press-1", "hour", SHIFT0 + 3600, total=1200, good=1200, ideal_s=2.5, product="6082-T6"),
    ])
    r = await client.get("/api/v1/machines/press-1/shift-report",
                         params={"shift_start": "2025-06-15T14:00", "tz": "plant"})
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["shift"] == "late" and rep["start"] == "2025-06-15T14:00:00+02:00" and rep["target_basis"] == "ideal"
    assert len(rep["hours"]) == 8
    h0, h1, h2 = rep["hours"][:3]
    assert h0["planned_s"] == 3600 and h0["ideal"] == 1800 and h0["good"] == 1450
    # The hour began on 6063-T5 (h0 ended with it); its ideal count follows what it made: 6082-T6 billets.
    assert h1["ideal"] == pytest.approx(3600 / 2.5) and h1["product"] == "6063-T5"
    assert h2["good"] == 0 and h2["total"] == 0  # past hour without a stored row
    assert h2["product"] == "6082-T6"  # the product the press was left on
    assert rep["good"] == 2650 and rep["hours"][1]["cumulative_good"] == 2650
    assert rep["target"] == pytest.approx(1800 + 1440 + 6 * 1440)
    r = await client.get("/api/v1/machines/press-1/shift-report", params={"shift_start": "bad"})
    assert r.status_code == 422


async def put_targets(db: str, body: dict) -> None:  # type: ignore[type-arg]
    import psycopg

    from oee_stream.storage import edits

    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        await edits.put_config(conn, "admin", "targets", body)


async def test_shift_report_uses_targets_set_through_the_api(client: httpx.AsyncClient, db: str) -> None:
    await write(db, [make_result("press-1", "hour", SHIFT0, total=1500, good=1450, product="6063-T5")])
    url, params = "/api/v1/machines/press-1/shift-report", {"shift_start": iso(SHIFT0)}
    assert (await client.get(url, params=params)).json()["target_basis"] == "ideal"
    await put_targets(db, {"press-1": {"target_oee": 0.5}})
    rep = (await client.get(url, params=params)).json()
    assert rep["target_basis"] == "target_oee"
    assert rep["hours"][0]["ideal"] == 1800 and rep["hours"][0]["target"] == pytest.approx(900)
    assert rep["target"] == pytest.approx(8 * 900)
    await put_targets(db, {"press-1": {"target_oee": 0.5, "units_per_hour": 1000}})
    rep = (await client.get(url, params=params)).json()
    assert rep["target_basis"] == "configured" and rep["target"] == pytest.approx(8000)


async def test_shift_report_target_of_an_hour_with_two_products(client: httpx.AsyncClient, db: str) -> None:
    """A closed hour counts the mix it ran, not the product it ended with; its `product` is the one it began
    with (the one the hour before the shift ended with)."""
    await write(db, [
        make_result("press-1", "hour", SHIFT0 - 3600, total=1800, good=1800, product="6063-T5"),
        # 500 billets at 2.0 s, then 500 at 2.5 s: 2250 s at ideal speed, ended on 6082-T6.
        make_result("press-1", "hour", SHIFT0, total=1000, good=1000, ideal_s=2.25, product="6082-T6"),
    ])
    rep = (await client.get("/api/v1/machines/press-1/shift-report", params={"shift_start": iso(SHIFT0)})).json()
    h0, h1 = rep["hours"][:2]
    assert h0["product"] == "6063-T5" and h0["ideal"] == pytest.approx(3600 * 1000 / 2250)
    assert h1["product"] == "6082-T6" and h1["ideal"] == pytest.approx(3600 / 2.5)


async def test_shift_report_target_of_the_current_hour_stays_put(client: httpx.AsyncClient, db: str) -> None:
    """The hour in progress is planned with the product running at its start, whatever runs now."""
    import time

    from oee_stream.engine.calendar import local_floor

    now_hour = local_floor(time.time(), "Europe/Berlin", "hour")
    await write(db, [
        make_result("press-1", "hour", now_hour - 3600, total=1800, good=1800, product="6063-T5"),
        make_result("press-1", "hour", now_hour, total=100, good=100, ideal_s=2.5, product="6082-T6"),
    ])
    rep = (await client.get("/api/v1/machines/press-1/shift-report")).json()
    current = next(h for h in rep["hours"] if h["start"] == iso(now_hour))  # the demo's shifts start on the hour
    assert current["product"] == "6063-T5"
    assert current["ideal"] == pytest.approx(current["planned_s"] / 2.0)


async def test_downtime_events_filtered_and_paged(client: httpx.AsyncClient, db: str) -> None:
    await write(db, intervals=[
        StateInterval("press-1", T0, T0 + 600, "running"),
        StateInterval("press-1", T0 + 600, T0 + 900, "unplanned_stop", "die failure", "plc"),
        StateInterval("press-1", T0 + 900, T0 + 1000, "planned_stop", "die change", "operator", "new die 17"),
        StateInterval("press-1", T0 + 1000, None, "micro_stop"),
    ])
    url = "/api/v1/machines/press-1/downtime"
    r = await client.get(url, params={"start": iso(T0), "end": iso(T0 + 7200)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 3 and [e["time_class"] for e in body["items"]] == ["unplanned_stop", "planned_stop", "micro_stop"]
    ev = body["items"][1]
    assert ev == {"machine": "press-1", "start": iso(T0 + 900), "end": iso(T0 + 1000), "duration_s": 100.0,
                  "time_class": "planned_stop", "reason": "die change", "reason_category": None,
                  "reason_source": "operator", "comment": "new die 17"}
    assert body["items"][2]["end"] is None and body["items"][2]["duration_s"] > 1000
    r = await client.get(url, params={"start": iso(T0), "end": iso(T0 + 7200), "classes": "running", "limit": 1})
    assert r.json()["total"] == 1 and r.json()["items"][0]["time_class"] == "running"
    r = await client.get(url, params={"start": iso(T0 + 650), "end": iso(T0 + 700)})  # overlap, not containment
    assert [e["reason"] for e in r.json()["items"]] == ["die failure"]
    assert (await client.get(url, params={"start": iso(T0), "end": iso(T0 + 1), "classes": "x"})).status_code == 422


async def test_shifts_csv_one_row_per_machine_and_shift(client: httpx.AsyncClient, db: str) -> None:
    await write(db, [
        make_result("press-1", "shift", SHIFT0, 8 * 3600, total=7000, good=6900, shift="late"),
        make_result("caster-1", "shift", SHIFT0, 8 * 3600, seconds={"unscheduled": 28800}, shift="late"),
        make_result("press-1", "shift", SHIFT0 + 8 * 3600, 8 * 3600, total=10, good=10, shift="night"),
        kind(make_result("extrusion", "shift", SHIFT0, 8 * 3600, total=1, good=1, shift="late"), "line"),
    ])
    r = await client.get("/api/v1/reports/shifts.csv",
                         params={"start": "2025-06-15", "end": "2025-06-16", "tz": "plant"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(x["machine"], x["shift"]) for x in rows] == [("caster-1", "late"), ("press-1", "late"), ("press-1", "night")]
    press = rows[1]
    assert press["line"] == "extrusion" and press["start"] == "2025-06-15T14:00:00+02:00"
    assert float(press["total"]) == 7000 and float(press["running_s"]) == 28800
    assert rows[0]["oee"] == "" and rows[0]["availability"] == ""  # undefined ratios are empty, not NaN
