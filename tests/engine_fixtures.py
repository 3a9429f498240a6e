"""Small plants for engine tests, built in code so each test shows its own settings."""

from __future__ import annotations

from typing import Any

from oee_stream.config import Plant


def plant(
    *,
    machines: list[dict[str, Any]] | None = None,
    shifts: list[dict[str, Any]] | None = None,
    policies: dict[str, Any] | None = None,
    timezone: str = "UTC",
    exceptions: list[dict[str, Any]] | None = None,
) -> Plant:
    machines = machines or [
        {"id": "m1", "state_table": "t", "products": {"a": {"ideal_cycle_time_s": 1.0}}},
    ]
    return Plant.model_validate(
        {
            "site": {"id": "site", "timezone": timezone},
            "policies": policies or {},
            "calendars": {
                "default": {
                    "timezone": timezone,
                    "shifts": shifts if shifts is not None else [{"name": "all", "start": "00:00", "end": "00:00"}],
                    "exceptions": exceptions or [],
                }
            },
            "state_tables": {
                "t": {
                    0: {"class": "unplanned_stop", "reason": "fault"},
                    1: {"class": "running"},
                    2: {"class": "planned_stop", "reason": "changeover"},
                    3: {"class": "unplanned_stop", "reason": "starved"},
                    4: {"class": "unknown", "reason": "plc says unknown"},
                }
            },
            "lines": [{"id": "l1", "machines": machines}],
        }
    )
