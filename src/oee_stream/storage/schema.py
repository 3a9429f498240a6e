"""Table layout shared by migrations, the writer and the queries.

Kept in one place so a column added for a KPI shows up in the DDL, the upsert and the API together.
"""

from __future__ import annotations

from datetime import UTC, datetime

from oee_stream.engine.result import TIME_CLASSES


def to_utc(epoch: float) -> datetime:
    """An epoch time as the timezone-aware datetime psycopg sends as timestamptz."""
    return datetime.fromtimestamp(epoch, tz=UTC)


# Sample quality as stored: a smallint keeps the hot table narrow; the mapping is also written to the
# column comment so a Grafana user reading the table does not need this file.
QUALITY_CODES: dict[str, int] = {"good": 0, "uncertain": 1, "bad": 2}
QUALITY_NAMES: dict[int, str] = {v: k for k, v in QUALITY_CODES.items()}

# One column per time class, named "<class>_s", so SQL roll-ups can add seconds without touching JSON.
SECONDS_COLUMNS: tuple[str, ...] = tuple(f"{c}_s" for c in TIME_CLASSES)

# Ratios are stored for dashboards, but roll-ups must re-derive them from the additive columns below.
RATIO_COLUMNS: tuple[str, ...] = (
    "availability",
    "performance",
    "quality",
    "oee",
    "teep",
    "utilization",
    "coverage",
)
ADDITIVE_COLUMNS: tuple[str, ...] = (
    "total",
    "good",
    "reject",
    *SECONDS_COLUMNS,
    "ppt_s",
    "run_time_s",
    "net_run_time_s",
    "fully_productive_s",
    "stops",
)
OEE_RESULT_COLUMNS: tuple[str, ...] = (
    "entity",
    "entity_kind",
    "window_kind",
    "window_start",
    "window_end",
    "computed_at",
    *RATIO_COLUMNS,
    *ADDITIVE_COLUMNS,
    "mtbf_s",
    "mttr_s",
    "flags",
    "config_hash",
    "payload",
)
