#!/usr/bin/env python3
"""Generate the Grafana dashboards of oee-stream (deploy/grafana/dashboards/*.json) from plain dicts.

    python deploy/grafana/build.py          # write the JSON files
    python deploy/grafana/build.py --check  # exit 1 when a committed file differs from what this builds

Rules every panel follows (OEE-SEMANTICS.md section 4):
* A KPI over a range is computed from the summed time-class seconds and counts of the engine's hourly
  results (`oee_results`, `window_kind = 'hour'`): e.g. Availability = sum(run_time_s) / sum(ppt_s).
  Ratios are never averaged.
* Counts of different machines are never added across units (billets and tonnes): plant-wide panels show
  one value per machine.
* Line OEE is the engine's line roll-up (`entity_kind = 'line'`): the line's constraint machine when the plant
  model names one, else the sum of its machines (OEE-SEMANTICS section 4). Its hourly rows are added over
  the range like a machine's, so the dashboards never re-implement the constraint rule.
* Only tables and views the read-only role `oee_grafana` may read; machine and line names come from the
  newest stored plant model (`config_versions`), so the dashboards need no plant-specific edits.

Standard library only, so it runs anywhere Python 3.11 does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS: dict[str, str] = {"type": "postgres", "uid": "oee-postgres"}  # the uid provisioning/datasources/oee.yaml sets
TAGS = ["oee-stream"]

STATE_COLORS = {
    "running": ("Running", "green"),
    "planned_stop": ("Planned stop", "blue"),
    "unplanned_stop": ("Unplanned stop", "red"),
    "micro_stop": ("Micro stop", "yellow"),
    "unknown": ("No data", "#6e7580"),
    "unscheduled": ("Not scheduled", "#23272e"),
    "planned_excluded": ("Break", "#23272e"),
}
STOP_CLASSES = "('planned_stop', 'unplanned_stop', 'micro_stop', 'unknown')"

# ------------------------------------------------------------------------------------------ SQL pieces

# Machines and lines of the newest plant model, in plant order.
MACHINES_CTE = """ml AS (
  SELECT li.l->>'id' AS line, coalesce(li.l->>'name', li.l->>'id') AS line_name,
         mi.m->>'id' AS machine, coalesce(mi.m->>'name', mi.m->>'id') AS machine_name,
         mi.m->>'unit' AS unit, li.lord * 1000 + mi.mord AS ord
  FROM (SELECT body FROM config_versions ORDER BY created_at DESC LIMIT 1) c
  CROSS JOIN LATERAL jsonb_array_elements(c.body->'lines') WITH ORDINALITY AS li(l, lord)
  CROSS JOIN LATERAL jsonb_array_elements(li.l->'machines') WITH ORDINALITY AS mi(m, mord)
)"""

# Lines of the newest plant model, in plant order, with the constraint machine's display name (if any).
LINES_CTE = """ln AS (
  SELECT li.l->>'id' AS line, coalesce(li.l->>'name', li.l->>'id') AS line_name, li.lord AS ord,
         coalesce((SELECT coalesce(m->>'name', m->>'id') FROM jsonb_array_elements(li.l->'machines') AS m
                   WHERE m->>'id' = li.l->>'constraint'), 'all machines') AS basis
  FROM (SELECT body FROM config_versions ORDER BY created_at DESC LIMIT 1) c
  CROSS JOIN LATERAL jsonb_array_elements(c.body->'lines') WITH ORDINALITY AS li(l, lord)
)"""

PPT_INCL = "running_s + planned_stop_s + unplanned_stop_s + micro_stop_s + unknown_s"


def kpis(p: str = "") -> str:
    """OEE, A, P, Q and coverage from sums of the additive columns (alias prefix `p`, e.g. 'h.')."""
    return f"""sum({p}run_time_s) / nullif(sum({p}ppt_s), 0) AS "Availability",
  sum({p}net_run_time_s) / nullif(sum({p}run_time_s), 0) AS "Performance",
  sum({p}good) / nullif(sum({p}total), 0) AS "Quality",
  CASE WHEN sum({p}ppt_s) > 0
       THEN coalesce(sum({p}net_run_time_s) * sum({p}good) / nullif(sum({p}total), 0) / sum({p}ppt_s), 0) END AS "OEE\""""


def coverage(p: str = "") -> str:
    cols = " + ".join(f"{p}{c}" for c in PPT_INCL.split(" + "))
    return f'1 - sum({p}unknown_s) / nullif(sum({cols}), 0) AS "Coverage"'


HOURS = "window_kind = 'hour' AND entity_kind = 'machine'"
LINE_HOURS = "h.window_kind = 'hour' AND h.entity_kind = 'line'"

# The ideal count of an hour: at the product mix actually made when something was made, else at the
# ideal speed of the product on the machine.
IDEAL_COUNT = """CASE WHEN net_run_time_s > 0 THEN total * ppt_s / net_run_time_s
       ELSE ppt_s / 3600 * coalesce((payload->>'ideal_speed_per_h')::float8, 0) END"""

# ------------------------------------------------------------------------------------- dict builders


def target(sql: str, fmt: str = "table", ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": DS, "editorMode": "code", "format": fmt, "rawQuery": True,
            "rawSql": sql.strip()}


def grid(x: int, y: int, w: int, h: int) -> dict[str, int]:
    return {"x": x, "y": y, "w": w, "h": h}


def state_mappings() -> list[dict[str, Any]]:
    return [{"type": "value", "options": {k: {"text": t, "color": c, "index": i}
                                          for i, (k, (t, c)) in enumerate(STATE_COLORS.items())}}]


# A stat panel showing one OEE tile per row, named by the row's entity column.
OEE_TILES: dict[str, Any] = {
    "reduceOptions": {"values": True, "calcs": [], "fields": "/^OEE$/"}, "colorMode": "background",
    "graphMode": "none", "textMode": "value_and_name", "orientation": "auto", "justifyMode": "center",
    "wideLayout": True, "showPercentChange": False,
}


def pct_field(**extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"unit": "percentunit", "decimals": 1, "min": 0, "max": 1,
                         "thresholds": {"mode": "absolute", "steps": [
                             {"color": "red", "value": None}, {"color": "orange", "value": 0.6},
                             {"color": "green", "value": 0.85}]}}
    d.update(extra)
    return d


def kpi_table(pid: int, title: str, pos: dict[str, int], sql: str, description: str, *,
              before: tuple[dict[str, Any], ...] = (), after: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """A table with columns OEE, A, P and Q as percentages coloured by the OEE thresholds, then Coverage."""
    kpis = [override(k, unit="percentunit", decimals=1, custom__cellOptions={"type": "color-text"},
                     thresholds=pct_field()["thresholds"]) for k in ("OEE", "Availability", "Performance", "Quality")]
    return panel(pid, title, "table", pos, [target(sql)], description=description,
                 defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
                 overrides=[*before, *kpis, override("Coverage", unit="percentunit", decimals=1), *after],
                 options={"showHeader": True, "cellHeight": "md"})


def override(name: str, **props: Any) -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()]}


def panel(pid: int, title: str, kind: str, pos: dict[str, int], targets: list[dict[str, Any]], *,
          description: str = "", defaults: dict[str, Any] | None = None,
          overrides: list[dict[str, Any]] | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": pos, "targets": targets,
        "fieldConfig": {"defaults": defaults or {}, "overrides": overrides or []},
        "options": options or {},
    }


def var_query(name: str, label: str, sql: str, *, multi: bool, include_all: bool) -> dict[str, Any]:
    return {
        "type": "query", "name": name, "label": label, "datasource": DS, "query": sql.strip(), "refresh": 1, "multi": multi, "includeAll": include_all,
        "sort": 0, "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if include_all else {},
        "options": [],
    }


LINE_VAR = var_query(
    "line", "Line",
    f"WITH {MACHINES_CTE} SELECT line_name AS __text, line AS __value FROM ml GROUP BY line, line_name "
    "ORDER BY min(ord)",
    multi=True, include_all=True,
)


def machine_var(multi: bool, by_line: bool) -> dict[str, Any]:
    where = "WHERE line IN (${line:sqlstring}) " if by_line else ""
    sql = f"WITH {MACHINES_CTE} SELECT machine_name AS __text, machine AS __value FROM ml {where}ORDER BY ord"
    v = var_query("machine", "Machine", sql, multi=multi, include_all=multi)
    if not multi:
        v["current"] = {}
    return v


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]],
              variables: list[dict[str, Any]], *, time_from: str = "now-24h", refresh: str = "1m") -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": TAGS, "editable": True,
        "schemaVersion": 39, "version": 1, "graphTooltip": 1, "timezone": "browser",
        "time": {"from": time_from, "to": "now"}, "refresh": refresh, "liveNow": False,
        "templating": {"list": variables}, "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": TAGS, "asDropdown": True, "title": "oee-stream",
                   "includeVars": False, "keepTime": True}],
        "panels": panels,
    }


# ------------------------------------------------------------------------------------- dashboards


def plant_overview() -> dict[str, Any]:
    now_sql = f"""
WITH {MACHINES_CTE},
st AS (
  SELECT DISTINCT ON (machine_id) machine_id, time_class, reason, start_time, end_time
  FROM state_intervals ORDER BY machine_id, start_time DESC
),
latest AS (  -- the newest result computed for the machine, whatever its window: state and speed now
  SELECT DISTINCT ON (entity) entity, payload
  FROM oee_results WHERE entity_kind = 'machine' ORDER BY entity, computed_at DESC, window_end DESC
),
sh AS (  -- the current (newest) shift of each machine
  SELECT DISTINCT ON (entity) * FROM oee_results
  WHERE entity_kind = 'machine' AND window_kind = 'shift' ORDER BY entity, window_end DESC
)
SELECT ml.line_name AS "Line", ml.machine_name AS "Machine",
  coalesce(CASE WHEN st.end_time IS NULL THEN st.time_class END, latest.payload->>'state', 'unknown') AS "State",
  coalesce(CASE WHEN st.end_time IS NULL THEN st.reason END, latest.payload->>'reason') AS "Reason",
  CASE WHEN st.end_time IS NULL THEN st.start_time END AS "Since",
  sh.window_start AS "Shift start",
  {kpis("sh.")},
  {coverage("sh.")},
  sum(sh.good) AS "Good", ml.unit AS "Unit",
  max((latest.payload->>'speed_per_h')::float8) AS "Speed /h",
  max((latest.payload->>'ideal_speed_per_h')::float8) AS "Ideal /h",
  max((latest.payload->>'speed_per_h')::float8) / nullif(max((latest.payload->>'ideal_speed_per_h')::float8), 0)
    AS "Speed vs ideal"
FROM ml
LEFT JOIN st ON st.machine_id = ml.machine
LEFT JOIN latest ON latest.entity = ml.machine
LEFT JOIN sh ON sh.entity = ml.machine
WHERE ml.line IN (${{line:sqlstring}})
GROUP BY ml.ord, ml.line_name, ml.machine_name, ml.unit, st.time_class, st.reason, st.start_time, st.end_time,
         latest.payload, sh.window_start
ORDER BY ml.ord
"""
    range_sql = f"""
WITH {MACHINES_CTE}
SELECT ml.machine_name AS "Machine",
  {kpis("h.")},
  {coverage("h.")}
FROM ml JOIN oee_results h ON h.entity = ml.machine
WHERE h.{HOURS.replace(" AND entity_kind", " AND h.entity_kind")} AND $__timeFilter(h.window_start)
  AND ml.line IN (${{line:sqlstring}})
GROUP BY ml.ord, ml.machine_name
ORDER BY ml.ord
"""
    trend_sql = f"""
WITH {MACHINES_CTE}
SELECT $__timeGroupAlias(h.window_start, '1h'), ml.machine_name AS metric,
  CASE WHEN sum(h.ppt_s) > 0
       THEN coalesce(sum(h.net_run_time_s) * sum(h.good) / nullif(sum(h.total), 0) / sum(h.ppt_s), 0) END AS "OEE"
FROM ml JOIN oee_results h ON h.entity = ml.machine
WHERE h.window_kind = 'hour' AND h.entity_kind = 'machine' AND $__timeFilter(h.window_start)
  AND ml.line IN (${{line:sqlstring}})
GROUP BY 1, 2
ORDER BY 1
"""
    line_shift_sql = f"""
-- Each line's current shift: the engine's line result (its constraint machine, or all its machines).
WITH {LINES_CTE},
sh AS (
  SELECT DISTINCT ON (entity) * FROM oee_results
  WHERE entity_kind = 'line' AND window_kind = 'shift' ORDER BY entity, window_end DESC
)
SELECT ln.line_name AS "Line", ln.basis AS "Line OEE of", sh.window_start AS "Shift start",
  {kpis("sh.")},
  {coverage("sh.")}
FROM ln LEFT JOIN sh ON sh.entity = ln.line
WHERE ln.line IN (${{line:sqlstring}})
GROUP BY ln.ord, ln.line_name, ln.basis, sh.window_start
ORDER BY ln.ord
"""
    line_range_sql = f"""
-- Each line over the range: its hourly line results added up, then the formulas (never a mean of ratios).
WITH {LINES_CTE}
SELECT ln.line_name AS "Line", ln.basis AS "Line OEE of",
  {kpis("h.")},
  {coverage("h.")}
FROM ln JOIN oee_results h ON h.entity = ln.line
WHERE {LINE_HOURS} AND $__timeFilter(h.window_start) AND ln.line IN (${{line:sqlstring}})
GROUP BY ln.ord, ln.line_name, ln.basis
ORDER BY ln.ord
"""
    state_tiles = panel(
        1, "State now", "stat", grid(0, 0, 24, 5),
        [target(now_sql)],
        description="One tile per machine, coloured by its current state (open state interval).",
        defaults={"mappings": state_mappings(), "color": {"mode": "thresholds"},
                  "thresholds": {"mode": "absolute", "steps": [{"color": "#6e7580", "value": None}]}},
        options={"reduceOptions": {"values": True, "calcs": [], "fields": "/^State$/"}, "colorMode": "background",
                 "graphMode": "none", "textMode": "value_and_name", "justifyMode": "center",
                 "orientation": "auto", "text": {"titleSize": 18, "valueSize": 34}, "wideLayout": True,
                 "showPercentChange": False},
        overrides=[override("State", displayName="${__data.fields.Machine}")],
    )
    table_now = kpi_table(
        2, "Machines now: current shift", grid(0, 11, 24, 8), now_sql,
        "State, reason and time in state now; OEE, A, P, Q and coverage of the current shift from "
        "its time-class seconds and counts; current speed against the ideal of the running product.",
        before=(override("State", mappings=state_mappings(), custom__cellOptions={"type": "color-background"}),),
        after=(override("Speed vs ideal", unit="percentunit", decimals=0,
                        custom__cellOptions={"type": "gauge", "mode": "basic"}, max=1.2, min=0),
               override("Since", unit="dateTimeFromNow")),
    )
    oee_range = panel(
        3, "OEE over the selected range", "stat", grid(0, 19, 12, 7), [target(range_sql)],
        description="Per machine: summed hourly seconds and counts of the range, then OEE = net run time / PPT × "
                    "good / total. Never an average of hourly OEE values.",
        defaults=pct_field(),
        options={**OEE_TILES}, overrides=[override("OEE", displayName="${__data.fields.Machine}")],
    )
    apq_range = panel(
        4, "A / P / Q / coverage over the selected range", "bargauge", grid(12, 19, 12, 7), [target(range_sql)],
        defaults=pct_field(max=1.2), options={"reduceOptions": {"values": True, "calcs": [], "fields": ""},
                                              "displayMode": "basic", "orientation": "horizontal",
                                              "showUnfilled": True},
    )
    line_range = panel(
        6, "Line OEE over the selected range", "stat", grid(0, 5, 10, 6), [target(line_range_sql)],
        description="Per line: the engine's line results (the constraint machine when the plant model names one, "
                    "else the sum of the line's machines), their seconds and counts added over the range, then "
                    "OEE = net run time / PPT × good / total. Never an average of machine or hourly OEE values.",
        defaults=pct_field(),
        options={**OEE_TILES}, overrides=[override("OEE", displayName="${__data.fields.Line}")],
    )
    line_shift = kpi_table(
        7, "Lines: current shift", grid(10, 5, 14, 6), line_shift_sql,
        "OEE, A, P, Q and coverage of each line's current shift, from the line's time-class seconds and "
        "counts; \"Line OEE of\" names the constraint machine the line's figures come from.",
    )
    trend = panel(
        5, "OEE per hour", "timeseries", grid(0, 26, 24, 8), [target(trend_sql, "time_series")],
        defaults={"unit": "percentunit", "min": 0, "custom": {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 5,
                                                              "spanNulls": False}},
        options={"legend": {"displayMode": "table", "placement": "right", "calcs": []},
                 "tooltip": {"mode": "multi"}},
    )
    return dashboard("oee-plant-overview", "OEE · Plant overview",
                     "Every machine's state now, line and machine KPIs of the current shift and over the range, "
                     "speed against ideal.",
                     [state_tiles, line_range, line_shift, table_now, oee_range, apq_range, trend], [LINE_VAR], time_from="now-24h",
                     refresh="30s")


def machine_detail() -> dict[str, Any]:
    m = "${machine:sqlstring}"
    timeline_sql = f"""
SELECT greatest(start_time, $__timeFrom()::timestamptz) AS "time", time_class AS "State"
FROM state_intervals
WHERE machine_id = {m} AND start_time < $__timeTo()::timestamptz
  AND coalesce(end_time, 'infinity') > $__timeFrom()::timestamptz
ORDER BY 1
"""
    shift_sql = f"""
-- One bucket per shift: the hourly results inside each of the machine's shifts, added up.
SELECT s.window_start AS "time",
  {kpis("h.")}
FROM oee_results s
JOIN oee_results h ON h.entity = s.entity AND h.entity_kind = 'machine' AND h.window_kind = 'hour'
  AND h.window_start >= s.window_start AND h.window_start < s.window_end
WHERE s.entity = {m} AND s.entity_kind = 'machine' AND s.window_kind = 'shift' AND $__timeFilter(s.window_start)
GROUP BY s.window_start
ORDER BY 1
"""
    counts_sql = f"""
SELECT $__timeGroupAlias(window_start, '1h'), sum(good) AS "Good", sum(reject) AS "Reject"
FROM oee_results
WHERE entity = {m} AND {HOURS} AND $__timeFilter(window_start)
GROUP BY 1 ORDER BY 1
"""
    classes_sql = f"""
SELECT $__timeGroupAlias(window_start, '1h'),
  sum(running_s) / 60 AS "Running", sum(micro_stop_s) / 60 AS "Micro stop",
  sum(unplanned_stop_s) / 60 AS "Unplanned stop", sum(planned_stop_s) / 60 AS "Planned stop",
  sum(unknown_s) / 60 AS "No data", sum(planned_excluded_s) / 60 AS "Break",
  sum(unscheduled_s) / 60 AS "Not scheduled"
FROM oee_results
WHERE entity = {m} AND {HOURS} AND $__timeFilter(window_start)
GROUP BY 1 ORDER BY 1
"""
    range_sql = f"""
SELECT {kpis()},
  {coverage()},
  sum(run_time_s) / nullif(sum(stops), 0) AS "MTBF",
  sum(unplanned_stop_s) / nullif(sum(stops), 0) AS "MTTR",
  sum(stops) AS "Stops"
FROM oee_results
WHERE entity = {m} AND {HOURS} AND $__timeFilter(window_start)
"""
    events_sql = f"""
SELECT start_time AS "Start", end_time AS "End",
  extract(epoch FROM least(coalesce(end_time, now()), $__timeTo()::timestamptz)
                     - greatest(start_time, $__timeFrom()::timestamptz)) AS "Duration",
  time_class AS "Class", coalesce(reason, '') AS "Reason", coalesce(reason_source, '') AS "Source",
  coalesce(comment, '') AS "Comment"
FROM state_intervals
WHERE machine_id = {m} AND time_class IN {STOP_CLASSES}
  AND start_time < $__timeTo()::timestamptz AND coalesce(end_time, 'infinity') > $__timeFrom()::timestamptz
ORDER BY start_time DESC
LIMIT 500
"""
    class_colors = [override(t, color={"mode": "fixed", "fixedColor": c}) for t, c in
                    [(t, c) for _, (t, c) in STATE_COLORS.items()] + [("Running", "green")]]
    panels = [
        panel(1, "State timeline", "state-timeline", grid(0, 0, 24, 5), [target(timeline_sql)],
              defaults={"mappings": state_mappings(), "color": {"mode": "thresholds"},
                        "thresholds": {"mode": "absolute", "steps": [{"color": "#6e7580", "value": None}]},
                        "custom": {"fillOpacity": 90, "lineWidth": 0}},
              options={"mergeValues": True, "showValue": "auto", "alignValue": "left", "rowHeight": 0.9,
                       "legend": {"showLegend": False}}),
        panel(2, "OEE · A · P · Q over the range", "stat", grid(0, 5, 16, 4), [target(range_sql)],
              defaults=pct_field(), options={"reduceOptions": {"values": False, "calcs": ["lastNotNull"],
                                                               "fields": "/^(OEE|Availability|Performance|Quality|Coverage)$/"},
                                             "colorMode": "value", "graphMode": "none", "textMode": "value_and_name"}),
        panel(3, "MTBF · MTTR · stops", "stat", grid(16, 5, 8, 4), [target(range_sql)],
              defaults={"unit": "s", "decimals": 0},
              overrides=[override("Stops", unit="none")],
              options={"reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": "/^(MTBF|MTTR|Stops)$/"},
                       "colorMode": "none", "graphMode": "none", "textMode": "value_and_name"}),
        panel(4, "KPIs per shift", "timeseries", grid(0, 9, 12, 8), [target(shift_sql, "time_series")],
              description="Shift-aligned buckets: the hourly results inside each shift, added, then the formulas.",
              defaults={"unit": "percentunit", "min": 0,
                        "custom": {"drawStyle": "bars", "fillOpacity": 70, "barAlignment": -1}},
              options={"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}),
        panel(5, "Good and reject per hour", "timeseries", grid(12, 9, 12, 8), [target(counts_sql, "time_series")],
              defaults={"custom": {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}}},
              overrides=[override("Good", color={"mode": "fixed", "fixedColor": "green"}),
                         override("Reject", color={"mode": "fixed", "fixedColor": "red"})],
              options={"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}),
        panel(6, "Minutes per time class", "timeseries", grid(0, 17, 24, 8), [target(classes_sql, "time_series")],
              defaults={"unit": "m", "custom": {"drawStyle": "bars", "fillOpacity": 90,
                                                "stacking": {"mode": "normal"}}},
              overrides=class_colors,
              options={"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}),
        panel(7, "Downtime events", "table", grid(0, 25, 24, 10), [target(events_sql)],
              defaults={"custom": {"align": "auto"}},
              overrides=[override("Duration", unit="s"),
                         override("Class", mappings=state_mappings(), custom__cellOptions={"type": "color-text"})]),
    ]
    return dashboard("oee-machine-detail", "OEE · Machine detail",
                     "One machine: state timeline, KPIs per shift, counts, time classes and downtime events.",
                     panels, [machine_var(multi=False, by_line=False)], time_from="now-24h", refresh="1m")


def loss_analysis() -> dict[str, Any]:
    sel = "entity IN (${machine:sqlstring})"
    losses_sql = f"""
-- The six big losses in hours of planned production time, added over the range (OEE-SEMANTICS section 2).
WITH t AS (
  SELECT sum((payload->'six_big_losses_s'->>'unplanned_stops')::float8) AS unplanned,
         sum((payload->'six_big_losses_s'->>'planned_stops')::float8) AS planned,
         sum((payload->'six_big_losses_s'->>'small_stops')::float8) AS small,
         sum((payload->'six_big_losses_s'->>'slow_cycles')::float8) AS slow,
         sum((payload->'six_big_losses_s'->>'production_rejects')::float8) AS rejects,
         sum((payload->'six_big_losses_s'->>'startup_rejects')::float8) AS startup,
         sum(unknown_s) AS unknown
  FROM oee_results
  WHERE {HOURS} AND {sel} AND $__timeFilter(window_start)
)
SELECT v.loss AS "Loss", coalesce(v.seconds, 0) / 3600 AS "Hours"
FROM t CROSS JOIN LATERAL (VALUES
  (1, 'Equipment failure (unplanned stops)', t.unplanned), (2, 'Setup and adjustments (planned stops)', t.planned),
  (3, 'Small stops', t.small), (4, 'Slow cycles', t.slow), (5, 'Production rejects', t.rejects),
  (6, 'Startup rejects', t.startup), (7, 'No data (unknown)', t.unknown)) AS v(n, loss, seconds)
ORDER BY v.n
"""
    pareto_sql = f"""
-- Downtime Pareto: stop seconds per reason over the range, largest first, with the cumulative share.
WITH r AS (
  SELECT d.key AS reason, sum(d.value::float8) AS seconds
  FROM oee_results CROSS JOIN LATERAL jsonb_each_text(payload->'downtime_by_reason_s') AS d
  WHERE {HOURS} AND {sel} AND $__timeFilter(window_start)
  GROUP BY d.key
)
SELECT reason AS "Reason", seconds / 3600 AS "Hours",
  sum(seconds) OVER (ORDER BY seconds DESC, reason ROWS UNBOUNDED PRECEDING) / nullif(sum(seconds) OVER (), 0)
    AS "Cumulative"
FROM r
WHERE seconds > 0
ORDER BY seconds DESC, reason
"""
    # The loss table's columns, from the hourly results `h` of the range (machine or line rows alike).
    loss_hours = f"""sum(h.ppt_s) / 3600 AS "PPT h",
  sum(h.unplanned_stop_s) / 3600 AS "Unplanned stops h", sum(h.planned_stop_s) / 3600 AS "Planned stops h",
  sum(h.micro_stop_s) / 3600 AS "Small stops h",
  sum((h.payload->'six_big_losses_s'->>'slow_cycles')::float8) / 3600 AS "Slow cycles h",
  sum((h.payload->'six_big_losses_s'->>'production_rejects')::float8
      + (h.payload->'six_big_losses_s'->>'startup_rejects')::float8) / 3600 AS "Rejects h",
  sum(h.unknown_s) / 3600 AS "No data h",
  {kpis("h.")}"""
    by_machine_sql = f"""
WITH {MACHINES_CTE}
SELECT ml.machine_name AS "Machine", {loss_hours}
FROM ml JOIN oee_results h ON h.entity = ml.machine
WHERE h.window_kind = 'hour' AND h.entity_kind = 'machine' AND h.{sel} AND $__timeFilter(h.window_start)
GROUP BY ml.ord, ml.machine_name
ORDER BY ml.ord
"""
    by_line_sql = f"""
-- Per line: the engine's line results (constraint machine, or all machines) added over the range.
WITH {LINES_CTE}
SELECT ln.line_name AS "Line", ln.basis AS "Line OEE of", {loss_hours}
FROM ln JOIN oee_results h ON h.entity = ln.line
WHERE {LINE_HOURS} AND $__timeFilter(h.window_start) AND ln.line IN (${{line:sqlstring}})
GROUP BY ln.ord, ln.line_name, ln.basis
ORDER BY ln.ord
"""
    losses_day_sql = f"""
SELECT $__timeGroupAlias(window_start, '1d'),
  sum(unplanned_stop_s) / 3600 AS "Unplanned stops", sum(planned_stop_s) / 3600 AS "Planned stops",
  sum(micro_stop_s) / 3600 AS "Small stops",
  sum((payload->'six_big_losses_s'->>'slow_cycles')::float8) / 3600 AS "Slow cycles",
  sum((payload->'six_big_losses_s'->>'production_rejects')::float8
      + (payload->'six_big_losses_s'->>'startup_rejects')::float8) / 3600 AS "Rejects",
  sum(unknown_s) / 3600 AS "No data"
FROM oee_results
WHERE {HOURS} AND {sel} AND $__timeFilter(window_start)
GROUP BY 1 ORDER BY 1
"""
    panels = [
        panel(1, "Six big losses (hours)", "bargauge", grid(0, 0, 12, 9), [target(losses_sql)],
              description="Seconds of planned production time lost, added over the range and the selected machines. "
                          "Slow cycles are negative when Performance is over 100 % (ideal cycle time too slow).",
              defaults={"unit": "h", "decimals": 1, "color": {"mode": "continuous-YlRd"}, "min": 0},
              options={"reduceOptions": {"values": True, "calcs": [], "fields": "/^Hours$/"},
                       "displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
                       "namePlacement": "left"},
              overrides=[override("Hours", displayName="${__data.fields.Loss}")]),
        panel(2, "Downtime Pareto", "barchart", grid(12, 0, 12, 9), [target(pareto_sql)],
              description="Stop time per reason (planned, unplanned and micro stops), largest first; the line is "
                          "the cumulative share.",
              defaults={"unit": "h", "decimals": 1, "custom": {"fillOpacity": 80}},
              overrides=[override("Cumulative", unit="percentunit", min=0, max=1,
                                  custom__axisPlacement="right", color={"mode": "fixed", "fixedColor": "orange"})],
              options={"xField": "Reason", "orientation": "vertical", "showValue": "auto", "xTickLabelRotation": -30,
                       "legend": {"displayMode": "list", "placement": "bottom"}}),
        panel(3, "Losses per day (hours)", "timeseries", grid(0, 9, 24, 8), [target(losses_day_sql, "time_series")],
              defaults={"unit": "h", "custom": {"drawStyle": "bars", "fillOpacity": 85,
                                                "stacking": {"mode": "normal"}}},
              options={"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}),
        panel(4, "Losses by machine", "table", grid(0, 17, 24, 8), [target(by_machine_sql)],
              defaults={"decimals": 1},
              overrides=[override(k, unit="percentunit") for k in ("OEE", "Availability", "Performance", "Quality")]),
        panel(5, "Losses and OEE by line", "table", grid(0, 25, 24, 6), [target(by_line_sql)],
              description="The selected lines over the range, from the engine's line results: a line with a "
                          "constraint machine is that machine (\"Line OEE of\"), otherwise the sum of its machines.",
              defaults={"decimals": 1},
              overrides=[override(k, unit="percentunit") for k in ("OEE", "Availability", "Performance", "Quality")]),
    ]
    return dashboard("oee-loss-analysis", "OEE · Loss analysis",
                     "Six big losses and downtime Pareto for any range, line and machine.",
                     panels, [LINE_VAR, machine_var(multi=True, by_line=True)], time_from="now-7d", refresh="")


def shift_report() -> dict[str, Any]:
    m = "${machine:sqlstring}"
    hourly_sql = f"""
-- Hour by hour: target = the ideal count for the hour's planned production time.
SELECT $__timeGroupAlias(window_start, '1h'),
  sum({IDEAL_COUNT}) AS "Target",
  sum(good) AS "Good", sum(reject) AS "Scrap"
FROM oee_results
WHERE entity = {m} AND {HOURS} AND $__timeFilter(window_start)
GROUP BY 1 ORDER BY 1
"""
    table_sql = f"""
SELECT window_start AS "Hour",
  {IDEAL_COUNT.replace(chr(10), " ")} AS "Target",
  good AS "Good",
  good - ({IDEAL_COUNT.replace(chr(10), " ")}) AS "Good − target",
  sum({IDEAL_COUNT.replace(chr(10), " ")}) OVER w AS "Target cumulative",
  sum(good) OVER w AS "Good cumulative",
  reject AS "Scrap", reject / nullif(total, 0) AS "Scrap rate",
  CASE WHEN ppt_s > 0 THEN coalesce(net_run_time_s * good / nullif(total, 0) / ppt_s, 0) END AS "OEE",
  unplanned_stop_s / 60 AS "Unplanned stop min", stops AS "Stops"
FROM oee_results
WHERE entity = {m} AND {HOURS} AND $__timeFilter(window_start)
WINDOW w AS (ORDER BY window_start ROWS UNBOUNDED PRECEDING)
ORDER BY window_start
"""
    totals_sql = f"""
SELECT sum({IDEAL_COUNT}) AS "Target", sum(good) AS "Good", sum(reject) AS "Scrap",
  sum(reject) / nullif(sum(total), 0) AS "Scrap rate",
  {kpis()},
  sum(run_time_s) / nullif(sum(stops), 0) AS "MTBF",
  sum(unplanned_stop_s) / nullif(sum(stops), 0) AS "MTTR"
FROM oee_results
WHERE entity = {m} AND {HOURS} AND $__timeFilter(window_start)
"""
    shifts_sql = f"""
-- The engine's own shift results (plant-local shift boundaries), one row per shift.
SELECT window_start AS "Start", window_end AS "End", coalesce(payload->>'shift', '') AS "Shift",
  {IDEAL_COUNT.replace(chr(10), " ")} AS "Target", good AS "Good", reject AS "Scrap",
  {kpis().replace("sum(", "(")},
  run_time_s / nullif(stops, 0) AS "MTBF", unplanned_stop_s / nullif(stops, 0) AS "MTTR"
FROM oee_results
WHERE entity = {m} AND entity_kind = 'machine' AND window_kind = 'shift' AND $__timeFilter(window_start)
ORDER BY window_start DESC
"""
    panels = [
        panel(1, "Target vs actual per hour", "timeseries", grid(0, 0, 16, 9), [target(hourly_sql, "time_series")],
              description="Target: the ideal count for the planned production time of the hour (at the product mix "
                          "made). Good: first-pass good count.",
              defaults={"custom": {"drawStyle": "bars", "fillOpacity": 80, "barAlignment": 0}},
              overrides=[override("Target", color={"mode": "fixed", "fixedColor": "#8ab8ff"},
                                  custom__drawStyle="line", custom__lineWidth=3, custom__fillOpacity=0),
                         override("Good", color={"mode": "fixed", "fixedColor": "green"}),
                         override("Scrap", color={"mode": "fixed", "fixedColor": "red"})],
              options={"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}),
        panel(2, "Totals for the range", "stat", grid(16, 0, 8, 9), [target(totals_sql)],
              defaults={"decimals": 0},
              overrides=[*[override(k, unit="percentunit", decimals=1)
                           for k in ("OEE", "Availability", "Performance", "Quality", "Scrap rate")],
                         override("MTBF", unit="s"), override("MTTR", unit="s")],
              options={"reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": ""},
                       "colorMode": "none", "graphMode": "none", "textMode": "value_and_name",
                       "orientation": "horizontal"}),
        panel(3, "Hour by hour", "table", grid(0, 9, 24, 10), [target(table_sql)],
              defaults={"decimals": 0},
              overrides=[override("Scrap rate", unit="percentunit", decimals=1),
                         override("OEE", unit="percentunit", decimals=1),
                         override("Good − target", custom__cellOptions={"type": "color-text"},
                                  thresholds={"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                                            {"color": "green", "value": 0}]})]),
        panel(4, "Shifts", "table", grid(0, 19, 24, 8), [target(shifts_sql)],
              defaults={"decimals": 0},
              overrides=[*[override(k, unit="percentunit", decimals=1)
                           for k in ("OEE", "Availability", "Performance", "Quality")],
                         override("MTBF", unit="s"), override("MTTR", unit="s")]),
    ]
    return dashboard("oee-shift-report", "OEE · Shift report",
                     "Hour by hour target against actual, scrap, MTBF and MTTR of one machine.",
                     panels, [machine_var(multi=False, by_line=False)], time_from="now/d", refresh="1m")


DASHBOARDS = {
    "plant-overview.json": plant_overview,
    "machine-detail.json": machine_detail,
    "loss-analysis.json": loss_analysis,
    "shift-report.json": shift_report,
}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail when a committed dashboard differs")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    stale: list[str] = []
    for name, build in DASHBOARDS.items():
        path = args.out / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python deploy/grafana/build.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
