"""Grafana provisioning and deployment files, without Grafana: the YAML parses and has what Grafana needs,
the dashboards have stable uids and are what deploy/grafana/build.py generates, and every panel's SQL runs
against a real PostgreSQL (migrated, with stored results) as the read-only role `oee_grafana`, after
expanding Grafana's macros and variables, and returns the columns the panel expects. Range KPIs are checked
to be sums-then-ratios, not means of hourly ratios."""

from __future__ import annotations

import configparser
import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from grafana_schema import (
    DashboardProvider,
    PostgresJsonData,
    ProvisionedDashboards,
    ProvisionedDatasources,
    expand_env,
    validate_dashboard,
)
from oee_stream.config import Plant, load_plant
from oee_stream.engine.result import SIX_BIG_LOSSES, TIME_CLASSES, KpiResult
from oee_stream.storage.migrations import migrate
from oee_stream.storage.writer import StateInterval, StorageWriter

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
DEMO = ROOT / "deploy" / "demo" / "plant.yaml"
UIDS = {"oee-plant-overview", "oee-machine-detail", "oee-loss-analysis", "oee-shift-report"}
T0 = 1_750_000_000.0 - (1_750_000_000.0 % 3600)  # an hour boundary (UTC)
HOURS = 6
RANGE = (T0 - 3600, T0 + (HOURS + 1) * 3600)


def dashboards() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        out[path.name] = json.loads(path.read_text(encoding="utf-8"))
    return out


def panel_queries() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(dashboard uid, panel title, rawSql, panel) for every target of every panel."""
    for d in dashboards().values():
        for p in d["panels"]:
            for t in p["targets"]:
                yield d["uid"], p["title"], t["rawSql"], p


# ------------------------------------------------------------------------------------ provisioning


def test_datasource_provisioning() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "oee.yaml").read_text())
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["type"] == "postgres" and ds["uid"] == "oee-postgres" and ds["access"] == "proxy"
    assert ds["url"] == "$OEE_GRAFANA_DB_HOST"
    assert ds["user"] == "oee_grafana_login"  # member of the read-only group role oee_grafana
    assert ds["secureJsonData"] == {"password": "$OEE_GRAFANA_DB_PASSWORD"}
    assert "password" not in ds and "password" not in ds["jsonData"]
    assert ds["jsonData"]["database"] == "$OEE_GRAFANA_DB_NAME"
    assert isinstance(ds["jsonData"]["timescaledb"], bool)
    assert ds["jsonData"]["sslmode"] == "$OEE_GRAFANA_DB_SSLMODE"


def test_dashboard_provisioning() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "oee.yaml").read_text())
    assert doc["apiVersion"] == 1
    (prov,) = doc["providers"]
    assert prov["type"] == "file" and prov["options"]["path"].startswith("/var/lib/grafana/dashboards")
    assert prov["folderUid"] == "oee-stream"


def grafana_env() -> dict[str, str]:
    """The environment docker-compose.yml gives Grafana, with the defaults of its ${VAR:-default} values."""
    env = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]["grafana"]["environment"]
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def test_provisioning_files_validate_against_grafanas_provisioning_format() -> None:
    """Both files, with $VARIABLES expanded as Grafana does from the environment compose gives it: every key
    is one Grafana's provisioning knows, with the right type; every variable is set."""
    env = grafana_env()
    raw, used = expand_env(yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "oee.yaml").read_text()), env)
    assert used <= set(env), f"variables the Grafana service does not set: {used - set(env)}"
    assert {"OEE_GRAFANA_DB_HOST", "OEE_GRAFANA_DB_NAME", "OEE_GRAFANA_DB_PASSWORD"} <= used
    doc = ProvisionedDatasources.model_validate(raw)
    (ds,) = doc.datasources
    pg = PostgresJsonData.model_validate(ds.jsonData)
    assert pg.database == "oee" and pg.sslmode == "disable" and ds.url == "db:5432"
    raw, used = expand_env(yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "oee.yaml").read_text()), env)
    assert used <= set(env)
    (prov,) = ProvisionedDashboards.model_validate(raw).providers
    # The provider reads the folder compose mounts the generated dashboards at.
    mounts = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{prov.options.path}:ro" in mounts
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{prov.options.path}/plant-overview.json"


def test_provisioning_validation_catches_mistakes() -> None:
    import pydantic

    good = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "oee.yaml").read_text())["providers"][0]
    DashboardProvider.model_validate(good)
    for bad in ({"updateIntervalSecs": 60}, {"type": "files"}, {"options": {"paths": "/x"}}):
        with pytest.raises(pydantic.ValidationError):
            DashboardProvider.model_validate({**good, **bad})
    with pytest.raises(pydantic.ValidationError):
        PostgresJsonData.model_validate({"database": "oee", "sslmode": "verify"})


def test_dashboards_validate_against_grafanas_schema() -> None:
    """Grafana 11.3's dashboard schema (grafana-foundation-sdk): keys, types and enums of the dashboard, its
    variables, every panel and the options and field config of each panel type."""
    for name, d in dashboards().items():
        assert validate_dashboard(d) == [], name


def test_dashboard_schema_validation_catches_mistakes() -> None:
    d = dashboards()["plant-overview.json"]
    d["graphTooltip"] = 7
    d["panels"][0]["options"]["colorMode"] = "rainbow"
    d["panels"][1]["options"]["bogus"] = 1
    d["panels"][2]["type"] = "tabel"
    d["templating"]["list"][0]["refresh"] = "sometimes"
    d["panels"][-1]["fieldConfig"]["defaults"]["custom"]["drawStyle"] = "pies"
    d["panels"][-1]["gridPos"]["w"] = "wide"
    errors = "\n".join(validate_dashboard(d))
    for needle in ("graph_tooltip: 7", "color_mode: 'rainbow'", "options/bogus", "'tabel' is not a core panel",
                   "refresh: 'sometimes'", "draw_style: 'pies'", "grid_pos.w: expected int"):
        assert needle in errors, (needle, errors)


def test_dashboards_have_stable_uids_and_panels_with_targets() -> None:
    ds = dashboards()
    assert {d["uid"] for d in ds.values()} == UIDS
    for name, d in ds.items():
        assert d["title"] and d["schemaVersion"] >= 36, name
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), name
        assert d["panels"], name
        for p in d["panels"]:
            assert p["datasource"]["uid"] == "oee-postgres", (name, p["title"])
            assert p["targets"], (name, p["title"])
            for t in p["targets"]:
                assert t["rawQuery"] is True and t["rawSql"].strip(), (name, p["title"])
                assert t["datasource"]["uid"] == "oee-postgres"
        for v in d["templating"]["list"]:
            assert v["datasource"]["uid"] == "oee-postgres" and v["query"].strip()


def test_range_kpis_are_never_means_of_ratios() -> None:
    """No avg(); and the stored ratio columns are never read: every ratio is derived from summed columns."""
    ratio = re.compile(r"\b(oee|availability|performance|quality|coverage|teep|utilization|mtbf_s|mttr_s)\b", re.I)
    for uid, title, sql, _ in panel_queries():
        code = _strip_aliases(sql)
        assert not re.search(r"\bavg\s*\(", code, re.I), (uid, title)
        assert not ratio.search(code), (uid, title, ratio.search(code))


def _strip_aliases(sql: str) -> str:
    """SQL without comments, string literals and output aliases."""
    return re.sub(r'AS\s+"[^"]*"', "", re.sub(r"'[^']*'", "''", re.sub(r"--[^\n]*", "", sql)))


def test_build_check_passes() -> None:
    res = subprocess.run([sys.executable, str(GRAFANA / "build.py"), "--check"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr


def test_build_check_detects_drift(tmp_path: Path) -> None:
    for f in (GRAFANA / "dashboards").glob("*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    victim = tmp_path / "shift-report.json"
    victim.write_text(victim.read_text().replace("Shift report", "Shift rep0rt"))
    res = subprocess.run([sys.executable, str(GRAFANA / "build.py"), "--check", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "shift-report.json" in res.stderr


# -------------------------------------------------------------------------------------- SQL runs


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


def expand(sql: str, variables: dict[str, list[str]], start: float, end: float) -> str:
    """Grafana's PostgreSQL macros and `${var:sqlstring}` variables, as Grafana would expand them."""
    f, t = iso(start), iso(end)

    def group(m: re.Match[str]) -> str:
        col, interval = m.group(1).strip(), m.group(2)
        n, unit = re.fullmatch(r"(\d+)([smhd])", interval).groups()  # type: ignore[union-attr]
        return f"date_bin('{n} {_UNITS[unit]}', {col}, '2000-01-01') AS \"time\""

    sql = re.sub(r"\$__timeGroupAlias\(([^,]+),\s*'([^']+)'\)", group, sql)
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1)} BETWEEN '{f}' AND '{t}'", sql)
    sql = sql.replace("$__timeFrom()", f"'{f}'").replace("$__timeTo()", f"'{t}'")
    for name, values in variables.items():
        quoted = ",".join("'" + v.replace("'", "''") + "'" for v in values)
        sql = sql.replace(f"${{{name}:sqlstring}}", quoted)
    assert "$" not in sql, f"unexpanded macro or variable in:\n{sql}"
    return sql


def result(machine: str, window: str, start: float, end: float, *, unit: str, ideal_s: float,
           running: float, planned: float = 0.0, unplanned: float = 0.0, micro: float = 0.0, unknown: float = 0.0,
           total: float, good: float, stops: int = 0, reasons: dict[str, float] | None = None,
           shift: str | None = None) -> KpiResult:
    """A result consistent with OEE-SEMANTICS section 2 (micro stops count as performance loss)."""
    sec = dict.fromkeys(TIME_CLASSES, 0.0)
    sec.update(running=running, planned_stop=planned, unplanned_stop=unplanned, micro_stop=micro, unknown=unknown)
    sec["unscheduled"] = (end - start) - sum(sec.values())
    ppt = running + planned + unplanned + micro + unknown
    run = running + micro
    net = ideal_s * total
    reject = total - good

    def div(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    oee = None if ppt <= 0 else (0.0 if total <= 0 else net / ppt * good / total)
    losses = dict.fromkeys(SIX_BIG_LOSSES, 0.0)
    losses.update(unplanned_stops=unplanned, planned_stops=planned, small_stops=micro, slow_cycles=running - net,
                  production_rejects=ideal_s * reject)
    return KpiResult(
        entity=machine, entity_kind="machine", window=window, start=start, end=end, seconds=sec, total=total,
        good=good, reject=reject, unit=unit, availability=div(run, ppt), performance=div(net, run),
        quality=div(good, total), oee=oee, teep=None, utilization=div(ppt, end - start),
        coverage=1 - unknown / ppt if ppt else None, ppt_s=ppt, run_time_s=run, net_run_time_s=net,
        fully_productive_s=ideal_s * good, stops=stops, mtbf_s=div(run, stops), mttr_s=div(unplanned, stops),
        six_big_losses_s=losses, downtime_by_reason_s=reasons or {}, state="running", reason=None,
        state_since=start, speed_per_h=1500.0, ideal_speed_per_h=3600 / ideal_s, shift=shift,
    )


# press-1, hour by hour: very different planned time per hour, so the mean of hourly OEE differs from the OEE
# of the sums (the first hour is mostly a break).
PRESS_HOURS = [
    # running, planned, unplanned, micro, unknown, total, good, stops
    (300.0, 0.0, 0.0, 0.0, 0.0, 150.0, 150.0, 0),  # rest of the hour: break (planned_excluded via unscheduled)
    (2400.0, 600.0, 500.0, 100.0, 0.0, 1000.0, 950.0, 2),
    (3000.0, 0.0, 300.0, 60.0, 240.0, 1300.0, 1290.0, 1),
    (1800.0, 1200.0, 600.0, 0.0, 0.0, 800.0, 700.0, 3),
    (3600.0, 0.0, 0.0, 0.0, 0.0, 1700.0, 1690.0, 0),
    (3300.0, 0.0, 300.0, 0.0, 0.0, 1500.0, 1480.0, 1),
]


async def seed(db: str, plant: Plant) -> None:
    rows: list[KpiResult] = []
    for i, (run, pl, un, mi, unk, total, good, stops) in enumerate(PRESS_HOURS):
        a = T0 + i * 3600
        reasons = {"die failure": un * 0.7, "billet starved": un * 0.3, "die change": pl} if (un or pl) else {}
        rows.append(result("press-1", "hour", a, a + 3600, unit="billets", ideal_s=2.0, running=run, planned=pl,
                           unplanned=un, micro=mi, unknown=unk, total=total, good=good, stops=stops, reasons=reasons))
        rows.append(result("caster-1", "hour", a, a + 3600, unit="logs", ideal_s=1.5, running=3000, unplanned=600,
                           total=1800, good=1750, stops=1, reasons={"metal leak": 600}))
        rows.append(result("furnace-1", "hour", a, a + 3600, unit="t", ideal_s=100.0, running=3600, total=33,
                           good=33))
    # Two shifts: the first three hours and the last three (shift results as the engine stores them).
    for k, name in enumerate(("early", "late")):
        a, b = T0 + 3 * 3600 * k, T0 + 3 * 3600 * (k + 1)
        part = PRESS_HOURS[3 * k:3 * k + 3]
        sums = [sum(h[j] for h in part) for j in range(8)]
        rows.append(result("press-1", "shift", a, b, unit="billets", ideal_s=2.0, running=sums[0], planned=sums[1],
                           unplanned=sums[2], micro=sums[3], unknown=sums[4], total=sums[5], good=sums[6],
                           stops=int(sums[7]), shift=name))
        for m, unit, ideal in (("caster-1", "logs", 1.5), ("furnace-1", "t", 100.0)):
            rows.append(result(m, "shift", a, b, unit=unit, ideal_s=ideal, running=9000, unplanned=1800,
                               total=5400, good=5250, stops=3, shift=name))
    # Line results as the engine stores them: both demo lines name a constraint machine (press-1, caster-1), so a
    # line's seconds and counts are its constraint machine's (OEE-SEMANTICS section 4).
    constraint = {"press-1": "extrusion", "caster-1": "casthouse"}
    rows += [dataclasses.replace(r, entity=constraint[r.entity], entity_kind="line", downtime_by_reason_s={},
                                 state=None, reason=None, speed_per_h=None, ideal_speed_per_h=None)
             for r in rows if r.entity in constraint]
    intervals = [
        StateInterval("press-1", T0, T0 + 3600, "running"),
        StateInterval("press-1", T0 + 3600, T0 + 3600 + 500, "unplanned_stop", "die failure", "plc"),
        StateInterval("press-1", T0 + 3600 + 500, T0 + 5 * 3600, "running"),
        StateInterval("press-1", T0 + 5 * 3600, None, "planned_stop", "die change", "operator"),
        StateInterval("caster-1", T0, None, "running"),
    ]
    async with StorageWriter(db) as w:
        await w.record_config(plant)
        await w.write_results(rows)
        await w.write_state_intervals(intervals)
        await w.flush(10)


@pytest.fixture
async def seeded(fresh_db_url: str) -> str:
    report = migrate(fresh_db_url)
    if "oee_grafana" not in report.roles:
        pytest.skip("the test database user may not create or grant the oee_grafana role")
    await seed(fresh_db_url, load_plant(DEMO))
    return fresh_db_url


VARS = {"line": ["extrusion", "casthouse"], "machine": ["press-1"]}


def run_as_grafana(db: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with psycopg.connect(db, autocommit=True) as conn, conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("SET LOCAL ROLE oee_grafana")
        cur = conn.execute(sql)  # type: ignore[arg-type]
        cols = [c.name for c in cur.description or []]
        return cols, cur.fetchall()


def run_panel(db: str, sql: str, variables: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    cols, rows = run_as_grafana(db, expand(sql, variables or VARS, *RANGE))
    return [dict(zip(cols, r, strict=True)) for r in rows]


def press_sums() -> dict[str, float]:
    cols = ("running", "planned", "unplanned", "micro", "unknown", "total", "good", "stops")
    s = {c: sum(h[i] for h in PRESS_HOURS) for i, c in enumerate(cols)}
    ppt = s["running"] + s["planned"] + s["unplanned"] + s["micro"] + s["unknown"]
    run = s["running"] + s["micro"]
    net = 2.0 * s["total"]
    return {**s, "ppt": ppt, "run": run, "net": net, "A": run / ppt, "P": net / run, "Q": s["good"] / s["total"],
            "OEE": net / ppt * s["good"] / s["total"]}


async def test_every_panel_query_runs_as_oee_grafana(seeded: str) -> None:
    checked = 0
    for uid, title, sql, p in panel_queries():
        cols, rows = run_as_grafana(seeded, expand(sql, VARS, *RANGE))
        assert rows, f"{uid} / {title}: no rows for the seeded data"
        fmt = p["targets"][0]["format"]
        if fmt == "time_series":
            assert cols[0] == "time", (uid, title, cols)
            assert all(isinstance(r[0], datetime) for r in rows)
        opts = p.get("options", {})
        fields = opts.get("reduceOptions", {}).get("fields", "")
        if fields.startswith("/^"):
            pattern = re.compile(fields.strip("/"))
            assert any(pattern.match(c) for c in cols), (uid, title, fields, cols)
        if "xField" in opts:
            assert opts["xField"] in cols, (uid, title)
        for o in p["fieldConfig"]["overrides"]:
            name = o["matcher"]["options"]
            if p["type"] == "timeseries" and fmt == "time_series" and name not in cols:
                continue  # series names come from values (e.g. the metric column)
            assert name in cols, (uid, title, name, cols)
        checked += 1
    assert checked >= 16


async def test_variable_queries(seeded: str) -> None:
    for d in dashboards().values():
        for v in d["templating"]["list"]:
            rows = run_panel(seeded, v["query"], {"line": ["extrusion", "casthouse"]})
            assert {"__text", "__value"} <= set(rows[0]), (d["uid"], v["name"])
            values = [r["__value"] for r in rows]
            if v["name"] == "machine":
                assert values == ["press-1", "furnace-1", "caster-1"]
            else:
                assert values == ["extrusion", "casthouse"]
    loss = dashboards()["loss-analysis.json"]
    machine_var = next(v for v in loss["templating"]["list"] if v["name"] == "machine")
    rows = run_panel(seeded, machine_var["query"], {"line": ["casthouse"]})
    assert [r["__value"] for r in rows] == ["furnace-1", "caster-1"]


def _panel(uid_file: str, title: str) -> dict[str, Any]:
    return next(p for p in dashboards()[uid_file]["panels"] if p["title"] == title)


async def test_range_oee_is_sums_then_ratio(seeded: str) -> None:
    exp = press_sums()
    mean_of_hours = sum(
        2.0 * h[5] / (h[0] + h[1] + h[2] + h[3] + h[4]) * h[6] / h[5] for h in PRESS_HOURS) / len(PRESS_HOURS)
    assert abs(mean_of_hours - exp["OEE"]) > 0.01  # the data tells the two apart
    sql = _panel("plant-overview.json", "OEE over the selected range")["targets"][0]["rawSql"]
    rows = {r["Machine"]: r for r in run_panel(seeded, sql)}
    press = rows["Extrusion press 1 (2500 t)"]
    for col, k in (("Availability", "A"), ("Performance", "P"), ("Quality", "Q"), ("OEE", "OEE")):
        assert press[col] == pytest.approx(exp[k], rel=1e-9), col
    assert press["Coverage"] == pytest.approx(1 - exp["unknown"] / exp["ppt"])
    # Machine detail, MTBF/MTTR over the range: run time and unplanned stop time over the summed stops.
    sql = _panel("machine-detail.json", "MTBF · MTTR · stops")["targets"][0]["rawSql"]
    (row,) = run_panel(seeded, sql)
    assert row["MTBF"] == pytest.approx(exp["run"] / exp["stops"])
    assert row["MTTR"] == pytest.approx(exp["unplanned"] / exp["stops"])


def machine_sums(hours: list[tuple[float, ...]], ideal_s: float) -> dict[str, float]:
    ppt = sum(h[0] + h[1] + h[2] + h[3] + h[4] for h in hours)
    total, good = sum(h[5] for h in hours), sum(h[6] for h in hours)
    return {"ppt": ppt, "net": ideal_s * total, "total": total, "good": good,
            "OEE": ideal_s * total / ppt * good / total}


async def test_line_oee_is_the_constraint_machine_summed_over_the_range(seeded: str) -> None:
    """Line OEE per OEE-SEMANTICS section 4: the line's constraint machine (the demo names one per line), its
    seconds and counts added over the range; not a mean over the line's machines or hours, not a sum over
    machines of different units."""
    exp = press_sums()
    sql = _panel("plant-overview.json", "Line OEE over the selected range")["targets"][0]["rawSql"]
    rows = {r["Line"]: r for r in run_panel(seeded, sql)}
    assert list(rows) == ["Extrusion line 1", "Casthouse"]
    ext = rows["Extrusion line 1"]
    assert ext["Line OEE of"] == "Extrusion press 1 (2500 t)"
    for col, k in (("Availability", "A"), ("Performance", "P"), ("Quality", "Q"), ("OEE", "OEE")):
        assert ext[col] == pytest.approx(exp[k], rel=1e-9), col
    # Casthouse = caster-1 (constraint): 3000 s running of 3600 s PPT an hour, 1.5 s × 1800 logs, 1750 good.
    cast = rows["Casthouse"]
    assert cast["Line OEE of"] == "DC casting line 1"
    caster_oee = 1.5 * 1800 / 3600 * 1750 / 1800
    assert cast["OEE"] == pytest.approx(caster_oee)
    furnace_oee = 100.0 * 33 / 3600 * 1.0
    assert abs(cast["OEE"] - (caster_oee + furnace_oee) / 2) > 0.05  # not the mean over the line's machines
    only_ext = run_panel(seeded, sql, {"line": ["extrusion"]})
    assert [r["Line"] for r in only_ext] == ["Extrusion line 1"]

    sql = _panel("plant-overview.json", "Lines: current shift")["targets"][0]["rawSql"]
    rows = {r["Line"]: r for r in run_panel(seeded, sql)}
    late = machine_sums(PRESS_HOURS[3:], 2.0)
    assert rows["Extrusion line 1"]["Shift start"].timestamp() == T0 + 3 * 3600  # the newest shift
    assert rows["Extrusion line 1"]["OEE"] == pytest.approx(late["OEE"])

    sql = _panel("loss-analysis.json", "Losses and OEE by line")["targets"][0]["rawSql"]
    rows = {r["Line"]: r for r in run_panel(seeded, sql)}
    assert rows["Extrusion line 1"]["OEE"] == pytest.approx(exp["OEE"])
    assert rows["Extrusion line 1"]["PPT h"] == pytest.approx(exp["ppt"] / 3600)
    assert rows["Casthouse"]["Unplanned stops h"] == pytest.approx(HOURS * 600 / 3600)


async def test_shift_buckets_and_hourly_targets(seeded: str) -> None:
    sql = _panel("machine-detail.json", "KPIs per shift")["targets"][0]["rawSql"]
    rows = run_panel(seeded, sql)
    assert [r["time"].timestamp() for r in rows] == [T0, T0 + 3 * 3600]
    first = PRESS_HOURS[:3]
    ppt = sum(h[0] + h[1] + h[2] + h[3] + h[4] for h in first)
    net = 2.0 * sum(h[5] for h in first)
    assert rows[0]["OEE"] == pytest.approx(net / ppt * sum(h[6] for h in first) / sum(h[5] for h in first))

    sql = _panel("shift-report.json", "Hour by hour")["targets"][0]["rawSql"]
    rows = run_panel(seeded, sql)
    assert len(rows) == HOURS
    # Target of an hour = ideal count for its planned production time: PPT / 2.0 s per billet.
    h = PRESS_HOURS[1]
    assert rows[1]["Target"] == pytest.approx((h[0] + h[1] + h[2] + h[3] + h[4]) / 2.0)
    assert rows[1]["Good"] == h[6]
    assert rows[-1]["Good cumulative"] == sum(x[6] for x in PRESS_HOURS)

    sql = _panel("shift-report.json", "Shifts")["targets"][0]["rawSql"]
    rows = run_panel(seeded, sql)
    assert [r["Shift"] for r in rows] == ["late", "early"]


async def test_losses_and_pareto(seeded: str) -> None:
    exp = press_sums()
    sql = _panel("loss-analysis.json", "Six big losses (hours)")["targets"][0]["rawSql"]
    rows = {r["Loss"]: r["Hours"] for r in run_panel(seeded, sql)}
    assert len(rows) == 7
    assert rows["Equipment failure (unplanned stops)"] == pytest.approx(exp["unplanned"] / 3600)
    assert rows["Small stops"] == pytest.approx(exp["micro"] / 3600)
    assert rows["Slow cycles"] == pytest.approx((exp["running"] - exp["net"]) / 3600)
    assert rows["Production rejects"] == pytest.approx(2.0 * (exp["total"] - exp["good"]) / 3600)
    # With unknown time the losses add up to PPT − fully productive time (OEE-SEMANTICS section 2).
    fully = 2.0 * exp["good"]
    assert sum(rows.values()) == pytest.approx((exp["ppt"] - fully) / 3600)

    sql = _panel("loss-analysis.json", "Downtime Pareto")["targets"][0]["rawSql"]
    rows2 = run_panel(seeded, sql, {"line": ["extrusion", "casthouse"], "machine": ["press-1", "caster-1"]})
    hours = [r["Hours"] for r in rows2]
    assert hours == sorted(hours, reverse=True)
    assert rows2[0]["Reason"] == "metal leak"  # 6 × 600 s on the caster
    assert rows2[-1]["Cumulative"] == pytest.approx(1.0)


async def test_plant_overview_now(seeded: str) -> None:
    sql = _panel("plant-overview.json", "Machines now: current shift")["targets"][0]["rawSql"]
    rows = {r["Machine"]: r for r in run_panel(seeded, sql)}
    assert list(rows) == ["Extrusion press 1 (2500 t)", "Melting furnace 1 (40 t)", "DC casting line 1"]
    press = rows["Extrusion press 1 (2500 t)"]
    assert press["State"] == "planned_stop" and press["Reason"] == "die change"
    assert press["Shift start"].timestamp() == T0 + 3 * 3600  # the newest shift
    assert press["Speed vs ideal"] == pytest.approx(1500 / 1800)
    assert rows["DC casting line 1"]["State"] == "running"
    only_casthouse = run_panel(seeded, sql, {"line": ["casthouse"], "machine": []})
    assert {r["Line"] for r in only_casthouse} == {"Casthouse"}


# ----------------------------------------------------------------------------------------- deploy


def test_compose_file_parses() -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"db", "mqtt", "grafana", "oee-stream"} <= set(services)
    assert services["db"]["image"].startswith("timescale/timescaledb")
    assert services["mqtt"]["image"].startswith("eclipse-mosquitto")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    assert "build" in services["oee-stream"]
    mounts = " ".join(services["grafana"]["volumes"])
    assert "provisioning" in mounts and "dashboards" in mounts
    assert {"dockerfile", "dockerfile_inline"} & set(services["oee-stream"]["build"])


def test_systemd_units_are_hardened() -> None:
    units = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
    assert units
    for unit in units:
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read_string(unit.read_text())
        svc = cp["Service"]
        assert svc.get("User") == "oee-stream" or svc.get("DynamicUser") == "yes", unit.name
        for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "Restart": "on-failure",
                           "PrivateTmp": "yes", "ProtectHome": "yes"}.items():
            assert svc.get(key) == value, (unit.name, key)
        assert svc.get("StateDirectory", "").startswith("oee-stream"), unit.name
        assert "oee-stream" in svc["ExecStart"]
        assert "Install" in cp and cp["Install"].get("WantedBy")


def test_mosquitto_conf_has_tls_auth_and_acl() -> None:
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    lines = [ln.split("#")[0].strip() for ln in conf.splitlines()]
    settings = [ln for ln in lines if ln]
    assert "listener 8883" in settings and "allow_anonymous false" in settings
    assert any(s.startswith("certfile ") for s in settings) and any(s.startswith("keyfile ") for s in settings)
    assert any(s.startswith("password_file ") for s in settings) and any(s.startswith("acl_file ") for s in settings)
    acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text()
    assert "topic write oee/v1/" in acl and "user oee-engine" in acl


def test_setup_sql_mentions_every_group_role() -> None:
    text = (ROOT / "deploy" / "timescaledb" / "setup.sql").read_text()
    for group in ("oee_writer", "oee_api", "oee_grafana"):
        assert re.search(rf"IN ROLE {group}\b|GRANT {group} TO", text), group


def test_setup_sql_runs_then_migrations_and_grafana_login_reads(pg_server: Any) -> None:
    """deploy/timescaledb/setup.sql with psql on the private server, then the migrations as oee_owner, then a
    query as oee_grafana_login (read-only)."""
    import shutil

    from oee_stream.embedded import with_database

    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    pw = {"owner_password": "own-pw", "writer_password": "wr-pw", "api_password": "api-pw",
          "grafana_password": "gr'pw"}
    args = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg_server.url, "-f",
            str(ROOT / "deploy" / "timescaledb" / "setup.sql")]
    for k, v in pw.items():
        args += ["-v", f"{k}={v}"]
    for _ in range(2):  # idempotent
        res = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    try:
        admin = with_database(pg_server.url, "oee")
        with psycopg.connect(admin, autocommit=True) as conn:
            host = conn.info.host
            port = conn.info.port
        owner = f"host={host} port={port} dbname=oee user=oee_owner password=own-pw"
        report = migrate(owner)
        assert report.current >= 2
        grafana = f"host={host} port={port} dbname=oee user=oee_grafana_login password='gr\\'pw'"
        with psycopg.connect(grafana) as conn:
            assert conn.execute("SELECT count(*) FROM oee_results").fetchone() == (0,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("DELETE FROM oee_results")
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS oee WITH (FORCE)")
            for role in ("oee_owner", "oee_writer_login", "oee_api_login", "oee_grafana_login"):
                conn.execute(f"DROP ROLE IF EXISTS {role}")
