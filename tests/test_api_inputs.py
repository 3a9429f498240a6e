"""Bad time parameters get 422 naming the parameter and what is allowed, on every route (never a 500)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from oee_stream.config import Plant
from test_api import _client, api_settings


@pytest.fixture
async def client(db: str, plant: Plant) -> AsyncIterator[httpx.AsyncClient]:
    from oee_stream.api import create_app

    async for c in _client(create_app(api_settings(db, plant, "db", anonymous_read=True))):
        yield c


OEE = "/api/v1/machines/press-1/oee"
SHIFT = "/api/v1/machines/press-1/shift-report"


@pytest.mark.parametrize(("url", "needle"), [
    # Offsets of ±24 h or more are no UTC offsets.
    (f"{OEE}?start=2026-11-21&end=2026-11-22&tz=%2B25:00", "-23:59 to +23:59"),
    ("/api/v1/plant?tz=-24:00", "-23:59 to +23:59"),
    (f"{OEE}?window=shift&tz=%2B23:60", "-23:59 to +23:59"),
    # Times at the ends of what datetime can hold, in zones that push them past it.
    (f"{SHIFT}?shift_start=9999-12-31T23:00Z", "shift_start"),
    (f"{SHIFT}?shift_start=0001-01-01T00:00Z", "shift_start"),
    (f"{OEE}?start=0001-01-01T00:00Z&end=0001-01-02T00:00Z&tz=-05:00", "start"),
    (f"{OEE}?start=9999-12-31T00:00Z&end=9999-12-31T23:59Z&tz=%2B05:00", "start"),
    ("/api/v1/machines/press-1/downtime?start=0001-01-01&end=0001-01-02&tz=plant", "start"),
    (f"{OEE}?start=0001-01-01T05:00&end=2025-01-01T00:00Z&tz=%2B05:00", "start"),
    ("/api/v1/entities/alu-works/series?start=2025-01-01T00:00Z&end=9999-06-01T00:00Z", "end"),
    ("/api/v1/reports/shifts.csv?start=1969-12-31&end=1970-01-02&tz=UTC", "start"),
])
async def test_out_of_range_times_and_offsets_are_422(client: httpx.AsyncClient, url: str, needle: str) -> None:
    r = await client.get(url)
    assert r.status_code == 422, (url, r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and needle in detail, detail
    if "-23:59" not in needle:
        assert "1970-01-01T00:00:00Z" in detail and "9999-01-01T00:00:00Z" in detail


@pytest.mark.parametrize("url", [
    f"{OEE}?start=2025-06-15&end=2025-06-16&tz=%2B23:59",
    f"{OEE}?start=2025-06-15&end=2025-06-16&tz=-23:59",
    f"{OEE}?start=1970-01-01T00:00Z&end=1970-01-02T00:00Z&tz=-23:59",
    f"{OEE}?start=9998-12-31T00:00Z&end=9999-01-01T00:00Z&tz=%2B23:59",
    f"{SHIFT}?shift_start=9998-12-31T23:00Z&tz=%2B23:59",
    f"{SHIFT}?shift_start=1970-01-01T00:00Z&tz=-23:59",
    "/api/v1/plant?tz=-23:59",
])
async def test_times_and_offsets_at_the_limits_are_answered(client: httpx.AsyncClient, url: str) -> None:
    r = await client.get(url)
    assert r.status_code == 200, (url, r.text)
