"""The plant model as `oee-stream check-config` sees it: every problem of every file, one line each
(`file: field.path: message`), with the bad value, what is allowed and a close match; warnings for
valid but suspicious settings. Files are real YAML in tmp_path, checked through the CLI's entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from oee_stream.cli import app
from oee_stream.config import ConfigError, load_plant, plant_warnings, read_yaml
from oee_stream.connectors.config import ConfigReport, check_config_files

REPO = Path(__file__).resolve().parent.parent
DEMO_PLANT = REPO / "deploy" / "demo" / "plant.yaml"
DEMO_CONNECTORS = REPO / "connectors"
DEMO_TEXT = DEMO_PLANT.read_text()


def plant_file(tmp_path: Path, *edits: tuple[str, str], name: str = "plant.yaml") -> Path:
    """The demo plant with text replacements, each of which must apply."""
    text = DEMO_TEXT
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    p = tmp_path / name
    p.write_text(text)
    return p


def check(plant: Path, connectors: Path | None = None) -> ConfigReport:
    return check_config_files(plant, connectors, env={})


def errors_of(plant: Path) -> list[str]:
    report = check(plant)
    assert report.errors, "expected errors"
    return report.errors


# ------------------------------------------------------------------------------------------ the demo


def test_demo_configuration_passes_without_warnings() -> None:
    report = check(DEMO_PLANT, DEMO_CONNECTORS)
    assert report.ok and report.errors == [] and report.warnings == []
    assert [f.name for f in report.connector_files] == ["modbus-demo.yaml", "opcua-demo.yaml"]
    assert report.plant is not None and len(report.plant.machines) == 3
    assert plant_warnings(load_plant(REPO / "simulators" / "plant-full.yaml"), "x") == []


# ------------------------------------------------------------------------------------------ shift times


def test_unquoted_shift_times_are_errors_that_show_the_quoted_form(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ('{name: early, start: "06:00", end: "14:00"}', "{name: early, start: 6:00, end: 14:00}"))
    assert errors_of(p) == [
        f'{p}: calendars.default.shifts.0.start: got the number 360 (YAML read 6:00 as a base-60 number); '
        'quote it: "06:00"',
        f'{p}: calendars.default.shifts.0.end: got the number 840 (YAML read 14:00 as a base-60 number); '
        'quote it: "14:00"',
    ]
    with pytest.raises(ConfigError, match="base-60"):
        load_plant(p)  # `run` and `demo` refuse it too, not only check-config


def test_unquoted_break_and_exception_times_and_plain_numbers(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ('      - {name: early, start: "06:00", end: "14:00"}',
                              '      - {name: early, start: "06:00", end: "14:00", breaks: [{start: 10:00, end: "10:30"}]}'
                              '\n    exceptions:\n      - {date: 2026-12-24, kind: replace, shifts: [{name: x, start: 360, '
                              'end: "12:00"}]}'))
    errs = errors_of(p)
    assert f'{p}: calendars.default.shifts.0.breaks.0.start: got the number 600 (YAML read 10:00 as a base-60 ' \
           'number); quote it: "10:00"' in errs
    assert f'{p}: calendars.default.exceptions.0.shifts.0.start: got the number 360; write a time as "HH:MM" ' \
           'in quotes' in errs


def test_base60_number_in_a_text_field_gets_the_hint(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("{name: early,", "{name: 6:00,"))
    assert errors_of(p) == [f'{p}: calendars.default.shifts.0.name: expected text, got the number 360 '
                            '(YAML read 6:00 as a base-60 number; quote it: "6:00")']


# ------------------------------------------------------------------------------------------ YAML problems


def test_duplicate_keys_name_the_path_and_both_lines(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("    1: {class: running, reason: melting}\n",
                              "    1: {class: running, reason: melting}\n    1: {class: running, reason: tapping}\n"),
                   ("  allowed_lateness_s: 300\n", "  allowed_lateness_s: 300\n  allowed_lateness_s: 30\n"))
    lines = p.read_text().splitlines()
    first = lines.index("    1: {class: running, reason: melting}") + 1
    late = lines.index("  allowed_lateness_s: 300") + 1
    assert errors_of(p) == [
        f"{p}: policies.allowed_lateness_s: defined twice (lines {late}, {late + 1}); YAML would keep only the last",
        f"{p}: state_tables.furnace.1: defined twice (lines {first}, {first + 1}); YAML would keep only the last",
    ]
    with pytest.raises(ConfigError, match="defined twice"):
        load_plant(p)


def test_duplicate_keys_inside_lists_and_merge_keys(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("base: &b {a: 1, b: 2}\nitems:\n  - {<<: *b, a: 3}\n  - name: x\n    name: y\n")
    with pytest.raises(ConfigError) as ei:
        read_yaml(p)  # an override after a merge key is intended; a repeated key is not
    assert ei.value.problems == [f"{p}: items.1.name: defined twice (lines 4, 5); YAML would keep only the last"]


def test_syntax_error_gives_file_line_and_column(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("  microstops_as: performance\n", "  microstops_as: [performance\n"))
    line = DEMO_TEXT.splitlines().index("  microstops_as: performance") + 1
    (err,) = errors_of(p)
    assert err == (f"{p}:{line + 1}:17: not valid YAML: expected ',' or ']', but got ':' "
                   f"(while parsing a flow sequence started on line {line})")


def test_empty_file_and_wrong_top_level(tmp_path: Path) -> None:
    p = tmp_path / "plant.yaml"
    p.write_text("# nothing yet\n")
    assert errors_of(p) == [f"{p}: the file is empty; expected a mapping with site, calendars, lines, ..."]
    p.write_text("- site\n- lines\n")
    assert errors_of(p) == [f"{p}: expected a mapping (key: value) at the top level, got a list"]
    assert errors_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: file not found"]
    assert errors_of(tmp_path) == [f"{tmp_path}: is a folder, not a YAML file"]


def test_an_impossible_date_is_one_problem_with_its_field_and_line(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ('      - {name: night, start: "22:00", end: "06:00"}\n',
                              '      - {name: night, start: "22:00", end: "06:00"}\n    exceptions:\n'
                              '      - {date: 2026-02-30, kind: holiday}\n'))
    line = p.read_text().splitlines().index("      - {date: 2026-02-30, kind: holiday}") + 1
    # PyYAML raises a bare ValueError for it; validation must not report the value a second time
    assert errors_of(p) == [f"{p}: calendars.default.exceptions.0.date: 2026-02-30 is not a date: day is out of "
                            f"range for month (line {line}, column 16)"]
    with pytest.raises(ConfigError, match="not a date"):
        load_plant(p)


def test_an_impossible_date_in_a_connector_file(tmp_path: Path) -> None:
    conn = tmp_path / "conn"
    conn.mkdir()
    (conn / "a.yaml").write_text("kind: opcua\nid: a\nsite: alu-works\nendpoint: opc.tcp://h:4840\n"
                                 "nodes: [{node_id: 'ns=2;s=x', machine: press-1, signal: 2026-13-01 10:00:00}]\n")
    report = check(DEMO_PLANT, conn)
    assert report.errors == [f"{conn / 'a.yaml'}: nodes.0.signal: 2026-13-01 10:00:00 is not a date and time: "
                             "month must be in 1..12 (line 5, column 57)"]


def test_a_code_written_as_a_number_and_as_text_is_defined_twice(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("    5: {class: planned_stop, reason: cleaning}\n",
                              '    5: {class: planned_stop, reason: cleaning}\n    "5": {class: running}\n'),
                   ("6063: {ideal_rate_per_h: 36.0, code: 1}",
                    "6063: {ideal_rate_per_h: 36.0, code: 1}\n          '6063': {ideal_rate_per_h: 30.0}"))
    lines = p.read_text().splitlines()
    code = lines.index("    5: {class: planned_stop, reason: cleaning}") + 1
    alloy = lines.index("          6063: {ideal_rate_per_h: 36.0, code: 1}") + 1
    assert errors_of(p) == [
        f'{p}: state_tables.press.5: defined twice (lines {code}, {code + 1}); 5 and "5" are one key here, only '
        "the last would be kept",
        f"{p}: lines.1.machines.0.products.6063: defined twice (lines {alloy}, {alloy + 1}); 6063 and '6063' are "
        "one key here, only the last would be kept",
    ]


def test_state_codes_are_whole_numbers_as_written(tmp_path: Path) -> None:
    # YAML 1.1 reads `yes` as true (== 1) and `5.0` as 5: neither may become a code or hide one
    p = plant_file(tmp_path, ("    5: {class: planned_stop, reason: cleaning}\n",
                              "    yes: {class: planned_stop, reason: cleaning}\n    6.0: {class: running}\n"
                              "    ' 7': {class: running}\n"))
    assert errors_of(p) == [
        f"{p}: state_tables.press.yes: the key 'yes' is not a whole number",
        f"{p}: state_tables.press.6.0: the key '6.0' is not a whole number",
        f"{p}: state_tables.press. 7: the key ' 7' is not a whole number",
    ]
    p = plant_file(tmp_path, ("    5: {class: planned_stop, reason: cleaning}\n", '    "5": {class: planned_stop}\n'))
    assert load_plant(p).state_tables["press"][5].time_class == "planned_stop"  # a quoted code is still the code


# ------------------------------------------------------------------------------------------ messages


def test_messages_echo_the_value_and_suggest_close_matches(tmp_path: Path) -> None:
    p = plant_file(
        tmp_path,
        ("  timezone: Europe/Berlin\n\npolicies", "  timezone: Europe/Berln\n\npolicies"),
        ("microstop_threshold_s: 5 ", "microstop_treshold_s: 5 "),
        ("microstops_as: performance", "microstops_as: perfomance"),
        ("allowed_lateness_s: 300", "allowed_lateness_s: five minutes"),
        ("unknown_policy: include", "unknown_policy: include\n  colour: red"),
        ("kind: discrete\n        unit: billets", "kind: discreet\n        unit: billets"),
        ("counter_width: 32\n        products:\n          6063-T5", "counter_width: wide\n        products:\n          6063-T5"),
    )
    errs = errors_of(p)
    assert errs == [
        f"{p}: site.timezone: unknown IANA timezone 'Europe/Berln' (did you mean 'Europe/Berlin'?)",
        f"{p}: policies.microstops_as: 'perfomance' is not allowed; expected 'performance' or 'availability'; "
        "did you mean 'performance'?",
        f"{p}: policies.allowed_lateness_s: 'five minutes' is not a number",
        f"{p}: policies.microstop_treshold_s: unknown key; did you mean 'microstop_threshold_s'?",
        f"{p}: policies.colour: unknown key; allowed: microstop_threshold_s, microstops_as, unknown_policy, "
        "stale_after_s, allowed_lateness_s, max_clock_skew_s",
        f"{p}: lines.0.machines.0.kind: 'discreet' is not allowed; expected 'discrete' or 'rate'; "
        "did you mean 'discrete'?",
        f"{p}: lines.0.machines.0.counter_width: 'wide' is not allowed; expected 16, 32 or 64",
    ]
    assert not any("Value error" in e or "Input should" in e for e in errs)


def test_bad_ids_ranges_and_keys_are_explained(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("- id: furnace-1", "- id: furnace 1"),
                   ("    0: {class: unplanned_stop, reason: burner fault}", "    x: {class: unplanned_stop}"),
                   ("{name: 1h, seconds: 3600}", "{name: 1h, seconds: -1}"))
    assert errors_of(p) == [
        f"{p}: rolling_windows.1.seconds: -1 is not allowed; it should be greater than 0",
        f"{p}: state_tables.furnace.x: the key 'x' is not a whole number",
        f"{p}: lines.1.machines.0.id: 'furnace 1' is not allowed: letters, digits, '_', '.' and '-', starting "
        "with a letter or digit",
    ]


def test_paths_keep_product_names_with_dashes_and_point_at_the_field(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("6063-T5: {ideal_cycle_time_s: 2.0}", "6063-T5: {ideal_rate_per_h: 1800}"),
                   ("constraint: caster-1", "constraint: caster-2"),
                   ("        state_table: caster\n", "        state_table: castr\n        default_product: 6063-log\n"))
    assert errors_of(p) == [
        f"{p}: lines.0.machines.0.products.6063-T5.ideal_cycle_time_s: a discrete machine needs ideal_cycle_time_s "
        "(seconds per unit), not ideal_rate_per_h; or set kind: rate",
        f"{p}: lines.1.machines.1.default_product: '6063-log' is not one of products ['6063-log-178']; "
        "did you mean '6063-log-178'?",
        # checked on the raw file as well: pydantic would check them only once the machines are valid
        f"{p}: lines.1.constraint: 'caster-2' is not a machine of this line; allowed: ['furnace-1', 'caster-1']; "
        "did you mean 'caster-1'?",
        f"{p}: lines.1.machines.1.state_table: 'castr' is not defined; allowed: ['caster', 'furnace', 'press']; "
        "did you mean 'caster'?",
    ]


def test_references_suggest_the_defined_name(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("state_table: furnace", "state_table: furnce"), ("kind: rate", "kind: rate\n        calendar: dflt"))
    assert errors_of(p) == [
        f"{p}: lines.1.machines.0.calendar: 'dflt' is not defined; allowed: ['default']; did you mean 'default'?",
        f"{p}: lines.1.machines.0.state_table: 'furnce' is not defined; allowed: ['caster', 'furnace', 'press']; "
        "did you mean 'furnace'?",
    ]


def test_state_code_machine_without_table(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("        state_table: press\n", ""))
    assert errors_of(p) == [f"{p}: lines.0.machines.0.state_table: state_source 'state_code' (the default) needs "
                            "state_table, a key of state_tables; or set state_source: run_bit or counts"]


def test_ids_follow_the_connectors_rule(tmp_path: Path) -> None:
    # `_status` is the bus's own topic segment; the connector files refuse such ids too
    p = plant_file(tmp_path, ("  id: alu-works", "  id: _alu"), ("- id: caster-1", "- id: _status"),
                   ("constraint: caster-1", "constraint: furnace-1"), ("- id: casthouse", "- id: .."),
                   ("area: casthouse", "area: _cast"))
    allowed = "letters, digits, '_', '.' and '-', starting with a letter or digit"
    assert errors_of(p) == [
        f"{p}: site.id: '_alu' is not allowed: {allowed}",
        f"{p}: lines.1.id: '..' is not allowed: {allowed}",
        f"{p}: lines.1.area: '_cast' is not allowed: {allowed}",
        f"{p}: lines.1.machines.1.id: '_status' is not allowed: {allowed}",
    ]


def test_rolling_window_names(tmp_path: Path) -> None:
    # a segment of the result topic and of API paths
    p = plant_file(tmp_path, ("{name: 24h, seconds: 86400}", '{name: "24h/#", seconds: 86400}'))
    assert errors_of(p) == [f"{p}: rolling_windows.3.name: '24h/#' is not allowed: letters, digits, '_', '.' and "
                            "'-', starting with a letter or digit"]
    p = plant_file(tmp_path, ("{name: 1h, seconds: 3600}", "{name: 15m, seconds: 3600}"),
                   ("{name: 8h, seconds: 28800}", "{name: shift, seconds: 28800}"),
                   ("{name: 24h, seconds: 86400}", "{name: 24h, seconds: 86400}\n  - {name: week, seconds: 60}"))
    assert errors_of(p) == [
        f"{p}: rolling_windows.1.name: '15m' is already the name of rolling_windows.0; results of both would be "
        "stored as one window",
        f"{p}: rolling_windows.2.name: 'shift' is the name of a calendar window (shift, day, hour, week, range); "
        "choose another, e.g. '8h'",
        f"{p}: rolling_windows.4.name: 'week' is the name of a calendar window (shift, day, hour, week, range); "
        "choose another, e.g. '8h'",
    ]


_SHIFTS = ('      - {name: early, start: "06:00", end: "14:00"}\n'
           '      - {name: late, start: "14:00", end: "22:00"}\n'
           '      - {name: night, start: "22:00", end: "06:00"}\n')


def test_calendars_that_never_produce(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("    shifts:\n" + _SHIFTS, "    shifts: []\n"))
    assert errors_of(p) == [f"{p}: calendars.default.shifts: no shifts: every hour would be unscheduled, its "
                            "machines would never have production time; list the recurring shifts"]
    p = plant_file(tmp_path, ('{name: late, start: "14:00", end: "22:00"}', '{name: late, start: "14:00", end: "22:00", days: []}'))
    assert errors_of(p) == [f"{p}: calendars.default.shifts.1.days: no weekday: the shift would never start; list "
                            "the days it starts on (mon..sun), or leave days out for every day"]
    # a machine run only on given dates: no recurring shifts, its days as replace exceptions
    p = plant_file(tmp_path, ("    shifts:\n" + _SHIFTS, "    shifts: []\n    exceptions:\n      - {date: 2026-12-24, "
                              'kind: replace, shifts: [{name: early, start: "06:00", end: "14:00"}]}\n'))
    assert check(p).ok


def test_breaks_lie_inside_their_shift(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("    shifts:\n" + _SHIFTS, "    shifts:\n"
                              '      - {name: early, start: "06:00", end: "14:00", breaks: [{start: "16:00", end: "16:30"}, '
                              '{start: "10:30", end: "10:00"}, {start: "09:00", end: "09:30"}, {start: "13:30", end: "14:00"}]}\n'
                              '      - {name: late, start: "14:00", end: "22:00"}\n'
                              '      - {name: night, start: "22:00", end: "06:00", breaks: [{start: "23:45", end: "00:15"}, '
                              '{start: "05:50", end: "06:10"}]}\n'))
    assert errors_of(p) == [
        f"{p}: calendars.default.shifts.0.breaks.0: 16:00-16:30 is not inside the shift 06:00-14:00; a break lies "
        "within its shift (one of a night shift may cross midnight)",
        f"{p}: calendars.default.shifts.0.breaks.1: 10:30-10:00 is not inside the shift 06:00-14:00; a break lies "
        "within its shift (one of a night shift may cross midnight)",
        f"{p}: calendars.default.shifts.2.breaks.1: 05:50-06:10 is not inside the shift 22:00-06:00; a break lies "
        "within its shift (one of a night shift may cross midnight)",
    ]


def test_a_holiday_with_shifts(tmp_path: Path) -> None:
    p = plant_file(tmp_path, (_SHIFTS, _SHIFTS + "    exceptions:\n      - {date: 2026-12-24, kind: holiday, "
                              'shifts: [{name: early, start: "06:00", end: "12:00"}]}\n'))
    assert errors_of(p) == [f"{p}: calendars.default.exceptions.0.shifts: a 'holiday' cancels the day's shifts, "
                            "these would be ignored; set kind: replace to work these shifts that day"]


def test_state_tables_lines_and_products_that_cannot_work(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("  furnace:\n", "  furnace: {}\n  old-furnace:\n"),
                   ("6063: {ideal_rate_per_h: 36.0, code: 1}", "6063: {ideal_rate_per_h: 36.0, code: -1}"))
    assert errors_of(p) == [
        f"{p}: lines.1.machines.0.products.6063.code: -1 is not allowed; it should be greater than or equal to 0"]
    p = plant_file(tmp_path, ("  furnace:\n", "  furnace: {}\n  old-furnace:\n"))
    assert errors_of(p) == [f"{p}: lines.1.machines.0.state_table: state_tables.furnace has no codes: every state "
                            "would be unmapped and the machine's time unknown; list the PLC's codes in it"]
    text = DEMO_TEXT.split("\nlines:\n")[0] + "\nlines:\n  - {id: empty, machines: []}\n"
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    assert errors_of(p) == [f"{p}: lines.0.machines: no machines: a line needs at least one"]


# ------------------------------------------------------------------------------------------ duplicates


def test_duplicate_product_codes_within_a_machine(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("6063: {ideal_rate_per_h: 36.0, code: 1}",
                              "6063: {ideal_rate_per_h: 36.0, code: 1}\n          6082: {ideal_rate_per_h: 30.0, code: 1}"),
                   ("6082-T6: {ideal_cycle_time_s: 2.5}", "6082-T6: {ideal_cycle_time_s: 2.5, code: 1}"))
    # the same code on two machines is fine: each PLC reports its own
    assert errors_of(p) == [f"{p}: lines.1.machines.0.products.6082.code: code 1 is already used by product '6063'"]


def test_two_exceptions_for_one_date(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ('      - {name: night, start: "22:00", end: "06:00"}\n',
                              '      - {name: night, start: "22:00", end: "06:00"}\n    exceptions:\n'
                              '      - {date: 2026-12-24, kind: holiday}\n      - {date: 2026-12-25, kind: holiday}\n'
                              '      - {date: 2026-12-24, kind: replace, shifts: [{name: ot, start: "06:00", end: "12:00"}]}\n'))
    assert errors_of(p) == [f"{p}: calendars.default.exceptions: item 2: date 2026-12-24 already has an exception "
                            "(item 0); one exception per date: a 'replace' lists all of that day's shifts, a "
                            "'holiday' cancels them"]


def test_duplicate_machine_id_is_reported_along_with_other_errors(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("- id: caster-1", "- id: press-1"))
    assert errors_of(p) == [
        f"{p}: lines.1.constraint: 'caster-1' is not a machine of this line; allowed: ['furnace-1', 'press-1']",
        f"{p}: lines.1.machines.1.id: machine id 'press-1' is already used by lines.0.machines.0",
    ]
    p = plant_file(tmp_path, ("- id: caster-1", "- id: press-1"), ("constraint: caster-1", "constraint: furnace-1"))
    assert errors_of(p) == [f"{p}: lines.1.machines.1.id: machine id 'press-1' is already used by lines.0.machines.0"]


def test_duplicate_line_ids(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("- id: casthouse", "- id: extrusion"))
    assert errors_of(p) == [f"{p}: lines.1.id: line id 'extrusion' is already used by lines.0"]


# ------------------------------------------------------------------------------------------ warnings


def shifts(tmp_path: Path, *lines: str) -> ConfigReport:
    p = plant_file(tmp_path, ('      - {name: early, start: "06:00", end: "14:00"}\n'
                              '      - {name: late, start: "14:00", end: "22:00"}\n'
                              '      - {name: night, start: "22:00", end: "06:00"}\n',
                              "".join(f"      - {line}\n" for line in lines)))
    report = check(p)
    assert report.ok, report.errors
    return report


def test_overlapping_shifts_warn_once_per_pair(tmp_path: Path) -> None:
    report = shifts(tmp_path, '{name: early, start: "06:00", end: "14:30"}',
                    '{name: late, start: "14:00", end: "22:00"}')
    assert report.warnings == [
        f"{tmp_path / 'plant.yaml'}: calendars.default.shifts.1: shift 'late' overlaps shift 'early' (shifts.0) on "
        "mon 14:00-14:30; time covered twice counts once, a break only where every covering shift has one"]


def test_night_shift_overlap_across_the_week_end(tmp_path: Path) -> None:
    report = shifts(tmp_path, '{name: night, start: "22:00", end: "07:00", days: [sun]}',
                    '{name: early, start: "06:00", end: "14:00", days: [mon]}')
    assert len(report.warnings) == 1 and "shift 'early' overlaps shift 'night' (shifts.0) on mon 06:00-07:00" \
        in report.warnings[0]


def test_back_to_back_and_day_split_shifts_do_not_warn(tmp_path: Path) -> None:
    report = shifts(tmp_path, '{name: early, start: "06:00", end: "14:00", days: [mon, tue, wed, thu, fri]}',
                    '{name: early, start: "06:00", end: "12:00", days: [sat]}',
                    '{name: late, start: "14:00", end: "22:00"}',
                    '{name: night, start: "22:00", end: "06:00"}')
    assert report.warnings == []


def test_duplicate_shift_names_on_a_common_day_warn(tmp_path: Path) -> None:
    report = shifts(tmp_path, '{name: early, start: "06:00", end: "14:00", days: [mon, tue]}',
                    '{name: early, start: "14:00", end: "22:00", days: [tue, wed]}')
    assert report.warnings == [
        f"{tmp_path / 'plant.yaml'}: calendars.default.shifts.1.name: 'early' is also the name of shifts.0, starting "
        "on the same day (tue); shift results and reports cannot tell them apart"]


def test_overlapping_shifts_of_a_replaced_day_warn(tmp_path: Path) -> None:
    report = shifts(tmp_path, '{name: early, start: "06:00", end: "14:00"}',
                    '{name: late, start: "14:00", end: "22:00"}\n    exceptions:\n'
                    '      - date: 2026-12-24\n        kind: replace\n        shifts:\n'
                    '          - {name: early, start: "06:00", end: "12:00"}\n'
                    '          - {name: inventory, start: "11:00", end: "15:00", days: [mon]}\n'
                    '          - {name: late, start: "15:00", end: "18:00"}')
    assert report.warnings == [
        f"{tmp_path / 'plant.yaml'}: calendars.default.exceptions.0.shifts.1: shift 'inventory' overlaps shift "
        "'early' (shifts.0) on 2026-12-24 11:00-12:00; time covered twice counts once, a break only where every "
        "covering shift has one"]


def test_a_state_table_the_machine_does_not_read_warns(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("state_table: press\n", "state_table: press\n        state_source: run_bit\n"))
    report = check(p)
    assert report.ok
    assert report.warnings == [
        f"{p}: lines.0.machines.0.state_table: not used with state_source: run_bit (the state comes from the "
        "'run' signal); remove it, or set state_source: state_code to map the 'state' signal through it"]


# ------------------------------------------------------------------------------------------ every file


def test_every_problem_of_every_file_is_reported(tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("allowed_lateness_s: 300", "allowed_lateness_s: soon"))
    conn = tmp_path / "conn"
    conn.mkdir()
    (conn / "a.yaml").write_text("kind: opcua\nid: a\nsite: alu-works\nendpoint: http://x\nnodes: []\n")
    (conn / "b.yaml").write_text("kind: modbus\nid: b\nsite: alu-works\ncontroller: tcp://h:502\n"
                                 "registers: [{machine: furnace-1, signal: state, address: -1}]\n")
    report = check(p, conn)
    assert report.errors == [
        f"{p}: policies.allowed_lateness_s: 'soon' is not a number",
        f"{conn / 'a.yaml'}: endpoint: 'http://x' is not an OPC UA endpoint; expected opc.tcp://host:port/path",
        f"{conn / 'b.yaml'}: registers.0.address: -1 is not allowed; it should be greater than or equal to 0",
    ]
    assert report.warnings == []  # which machine lacks a signal is unknowable while files are broken


# ------------------------------------------------------------------------------------------ the command


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """The command run in an empty folder (no .env, no defaults) with no OEE_* variables."""
    monkeypatch.chdir(tmp_path)
    for var in ("OEE_PLANT", "OEE_CONNECTORS"):
        monkeypatch.delenv(var, raising=False)
    return CliRunner()


def test_cli_ok_lists_the_files_and_counts(cli: CliRunner) -> None:
    res = cli.invoke(app, ["check-config", "--config", str(DEMO_PLANT), "--connectors", str(DEMO_CONNECTORS)])
    assert res.exit_code == 0, res.output
    assert res.stderr == ""
    first, *files = res.stdout.splitlines()
    assert first.startswith(f"ok: {DEMO_PLANT} (site alu-works, 2 lines, 3 machines, config hash ")
    assert first.endswith(f") and 2 connectors in {DEMO_CONNECTORS}")
    assert files == [f"  {DEMO_CONNECTORS / 'modbus-demo.yaml'}: modbus connector 'modbus-demo', 1 machine, 6 signals",
                     f"  {DEMO_CONNECTORS / 'opcua-demo.yaml'}: opcua connector 'opcua-demo', 2 machines, 8 signals"]


def test_cli_prints_every_error_and_exits_2(cli: CliRunner, tmp_path: Path) -> None:
    p = plant_file(tmp_path, ("allowed_lateness_s: 300", "allowed_lateness_s: soon"),
                   ("microstop_threshold_s: 5 ", "microstop_treshold_s: 5 "))
    res = cli.invoke(app, ["check-config", "--config", str(p), "--connectors", str(DEMO_CONNECTORS)])
    assert res.exit_code == 2
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        f"error: {p}: policies.allowed_lateness_s: 'soon' is not a number",
        f"error: {p}: policies.microstop_treshold_s: unknown key; did you mean 'microstop_threshold_s'?",
        "2 errors, 0 warnings",
    ]


def test_cli_warnings_go_to_stderr_and_keep_exit_0(cli: CliRunner, tmp_path: Path) -> None:
    p = plant_file(tmp_path, ('end: "14:00"}', 'end: "15:00"}'))
    res = cli.invoke(app, ["check-config", "--config", str(p), "--connectors", str(DEMO_CONNECTORS)])
    assert res.exit_code == 0
    assert res.stdout.startswith("ok: ")
    assert res.stderr.startswith(f"warning: {p}: calendars.default.shifts.1: shift 'late' overlaps shift 'early'")


def test_cli_without_a_plant_model(cli: CliRunner) -> None:
    res = cli.invoke(app, ["check-config"])
    assert res.exit_code == 2
    assert res.stderr == ("error: no plant model given: pass --config or set OEE_PLANT (the default "
                          "deploy/demo/plant.yaml does not exist here)\n")


def test_cli_plant_from_the_environment_and_no_default_connectors(cli: CliRunner,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OEE_PLANT", str(DEMO_PLANT))
    res = cli.invoke(app, ["check-config"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"ok: {DEMO_PLANT} (site alu-works")
    assert res.stderr == ("warning: no connector folder given (--connectors or OEE_CONNECTORS) and the default "
                          "connectors does not exist here: only the plant model was checked\n")


def test_cli_impossible_date_is_one_error_line(cli: CliRunner, tmp_path: Path) -> None:
    p = plant_file(tmp_path, ('      - {name: night, start: "22:00", end: "06:00"}\n',
                              '      - {name: night, start: "22:00", end: "06:00"}\n    exceptions:\n'
                              '      - {date: 2026-02-30, kind: holiday}\n'))
    res = cli.invoke(app, ["check-config", "--config", str(p), "--connectors", str(DEMO_CONNECTORS)])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    (error, summary) = res.stderr.splitlines()
    assert error.startswith(f"error: {p}: calendars.default.exceptions.0.date: 2026-02-30 is not a date: day is out "
                            "of range for month (line ")
    assert summary == "1 error, 0 warnings"


def test_cli_missing_connector_folder(cli: CliRunner) -> None:
    res = cli.invoke(app, ["check-config", "--config", str(DEMO_PLANT), "--connectors", "connectorz"])
    assert res.exit_code == 2
    assert res.stderr.splitlines() == ["error: connectorz: no such folder", "1 error, 0 warnings"]


def test_cli_missing_plant_file(cli: CliRunner) -> None:
    res = cli.invoke(app, ["check-config", "--config", "nope.yaml", "--connectors", str(DEMO_CONNECTORS)])
    assert res.exit_code == 2
    assert res.stderr.splitlines()[0] == "error: nope.yaml: file not found"
