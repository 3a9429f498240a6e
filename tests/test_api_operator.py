"""Operator workflows and configuration through the API: reasons, splits, the 409 rule, audit, config."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest

from oee_stream.api import ApiSettings, create_app
from oee_stream.api.auth import create_api_key
from oee_stream.config import load_plant
from oee_stream.engine.result import iso
from oee_stream.storage.migrations import migrate
from oee_stream.storage.writer import StateInterval, StorageWriter
from test_api import _client
from test_storage import T0

DEMO = Path(__file__).resolve().parents[1] / "deploy" / "demo" / "plant.yaml"


@pytest.fixture
async def env(fresh_db_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, str, dict[str, dict[str, str]]]]:
    migrate(fresh_db_url)
    keys = {r: {"Authorization": f"Bearer {create_api_key(fresh_db_url, f'{r} key', r)}"}
            for r in ("viewer", "operator", "admin")}
    async with StorageWriter(fresh_db_url) as w:
        await w.write_state_intervals([
            StateInterval("press-1", T0, T0 + 600, "running"),
            StateInterval("press-1", T0 + 600, T0 + 1200, "unplanned_stop", "unspecified", "plc"),
            StateInterval("press-1", T0 + 1200, None, "planned_stop", "die change", "plc"),
        ])
        await w.flush(10)
    async for c in _client(create_app(ApiSettings(database_url=fresh_db_url, plant=load_plant(DEMO)))):
        yield c, fresh_db_url, keys


def audit(url: str) -> list[tuple[str, str, dict, dict]]:  # type: ignore[type-arg]
    with psycopg.connect(url) as conn:
        return conn.execute("select actor, action, old, new from audit_log where action <> 'create_api_key' "
                            "order by id").fetchall()  # type: ignore[return-value]


async def test_set_reason_validated_against_reason_tree_and_audited(env) -> None:  # type: ignore[no-untyped-def]
    c, url, keys = env
    tree = (await c.get("/api/v1/reason-tree", headers=keys["viewer"])).json()
    assert tree["source"] == "plant state tables"
    assert "die failure" in tree["categories"]["unplanned_stop"]
    path = f"/api/v1/downtime/press-1/{iso(T0 + 600)}"
    r = await c.put(path, json={"reason": "coffee"}, headers=keys["operator"])
    assert r.status_code == 422 and "unknown reason" in r.json()["detail"]
    r = await c.put(path, json={"reason": "die failure", "category": "planned_stop"}, headers=keys["operator"])
    assert r.status_code == 422
    r = await c.put(path, json={"reason": "die failure", "comment": "crack in die 17"}, headers=keys["operator"])
    assert r.status_code == 200, r.text
    ev = r.json()
    assert ev["reason"] == "die failure" and ev["reason_category"] == "unplanned_stop"
    assert ev["reason_source"] == "operator" and ev["comment"] == "crack in die 17" and ev["duration_s"] == 600
    (actor, action, old, new), = audit(url)
    assert action == "set_reason" and actor.startswith("operator key (")
    assert old["reason"] == "unspecified" and new["reason"] == "die failure"
    # The engine re-emitting the interval keeps the operator's reason.
    async with StorageWriter(url) as w:
        await w.write_state_intervals([StateInterval("press-1", T0 + 600, T0 + 1200, "unplanned_stop", "unspecified", "plc")])
        await w.flush(10)
    r = await c.get("/api/v1/machines/press-1/downtime", params={"start": iso(T0), "end": iso(T0 + 7200)},
                    headers=keys["viewer"])
    assert r.json()["items"][0]["reason"] == "die failure"
    # Same instant written in local time finds the same event.
    r = await c.put("/api/v1/downtime/press-1/2025-06-15T17:10:00", params={"tz": "plant"},
                    json={"comment": "die sent to repair"}, headers=keys["operator"])
    assert r.status_code == 200 and r.json()["reason"] == "die failure" and r.json()["start"].endswith("+02:00")


async def test_running_time_never_becomes_downtime(env) -> None:  # type: ignore[no-untyped-def]
    c, url, keys = env
    r = await c.put(f"/api/v1/downtime/press-1/{iso(T0)}", json={"reason": "die failure"}, headers=keys["operator"])
    assert r.status_code == 409 and "running" in r.json()["detail"]
    r = await c.post(f"/api/v1/downtime/press-1/{iso(T0)}/split",
                     json={"at": iso(T0 + 300), "second": {"reason": "die failure"}}, headers=keys["operator"])
    assert r.status_code == 409
    r = await c.put(f"/api/v1/downtime/press-1/{iso(T0 + 1)}", json={"reason": "die failure"}, headers=keys["operator"])
    assert r.status_code == 404 and "downtime" in r.json()["detail"]
    assert audit(url) == []


async def test_split_into_two_reasons(env) -> None:  # type: ignore[no-untyped-def]
    c, url, keys = env
    path = f"/api/v1/downtime/press-1/{iso(T0 + 600)}/split"
    body = {"at": iso(T0 + 840), "first": {"reason": "billet starved"},
            "second": {"reason": "die failure", "comment": "then the die cracked"}}
    r = await c.post(path, json=body, headers=keys["operator"])
    assert r.status_code == 200, r.text
    first, second = r.json()["first"], r.json()["second"]
    assert (first["end"], first["reason"], first["duration_s"]) == (iso(T0 + 840), "billet starved", 240)
    assert (second["start"], second["end"], second["reason"]) == (iso(T0 + 840), iso(T0 + 1200), "die failure")
    assert second["time_class"] == "unplanned_stop" and second["comment"] == "then the die cracked"
    # The engine re-emitting the original interval cannot move the split point back.
    async with StorageWriter(url) as w:
        await w.write_state_intervals([StateInterval("press-1", T0 + 600, T0 + 1200, "unplanned_stop", "unspecified", "plc")])
        await w.flush(10)
    r = await c.get("/api/v1/machines/press-1/downtime", params={"start": iso(T0), "end": iso(T0 + 1200)},
                    headers=keys["viewer"])
    assert [(e["start"], e["end"], e["reason"]) for e in r.json()["items"]] == [
        (iso(T0 + 600), iso(T0 + 840), "billet starved"), (iso(T0 + 840), iso(T0 + 1200), "die failure")]
    assert [a[1] for a in audit(url)] == ["split"]
    # Outside the event, or an open event: refused.
    r = await c.post(path, json={**body, "at": iso(T0 + 2000)}, headers=keys["operator"])
    assert r.status_code == 422
    r = await c.post(f"/api/v1/downtime/press-1/{iso(T0 + 1200)}/split",
                     json={"at": iso(T0 + 1300), "second": {"reason": "cleaning"}}, headers=keys["operator"])
    assert r.status_code == 409 and "still going on" in r.json()["detail"]


async def test_config_versions_reason_tree_and_targets(env) -> None:  # type: ignore[no-untyped-def]
    c, _url, keys = env
    tree = {"mechanical": ["die failure", "press hydraulics"], "logistics": ["billet starved"]}
    r = await c.put("/api/v1/admin/config/reason_tree", json=tree, headers=keys["admin"])
    assert r.status_code == 200 and r.json()["version"] >= 1
    v1 = r.json()
    again = (await c.put("/api/v1/admin/config/reason_tree", json=tree, headers=keys["admin"])).json()
    assert again["version"] == v1["version"] and again["config_hash"] == v1["config_hash"]
    assert (await c.get("/api/v1/reason-tree", headers=keys["viewer"])).json()["categories"] == tree
    r = await c.put(f"/api/v1/downtime/press-1/{iso(T0 + 600)}", json={"reason": "press hydraulics"},
                    headers=keys["operator"])
    assert r.status_code == 200 and r.json()["reason_category"] == "mechanical"
    r = await c.put("/api/v1/admin/config/targets", json={"press-1": {"units_per_hour": 1500}}, headers=keys["admin"])
    assert r.status_code == 200
    rep = (await c.get("/api/v1/machines/press-1/shift-report", params={"shift_start": iso(T0)},
                       headers=keys["viewer"])).json()
    assert rep["target_basis"] == "configured" and rep["hours"][0]["target"] == 1500
    assert (await c.put("/api/v1/admin/config/targets", json={"nope": {}}, headers=keys["admin"])).status_code == 422
    r = await c.put("/api/v1/admin/config/products", json={"press-1": {"6063-T5": {"ideal_cycle_time_s": 1.9}}},
                    headers=keys["admin"])
    assert r.status_code == 200
    assert (await c.put("/api/v1/admin/config/products", json={"press-1": {"x": {}}},
                        headers=keys["admin"])).status_code == 422
    log = (await c.get("/api/v1/admin/audit", headers=keys["admin"])).json()
    assert [e["action"] for e in log[:4]] == ["put_config", "put_config", "set_reason", "put_config"]
    created = (await c.post("/api/v1/admin/keys", json={"name": "mes", "role": "viewer"}, headers=keys["admin"])).json()
    assert (await c.get("/api/v1/plant", headers={"X-API-Key": created["key"]})).status_code == 200
    assert (await c.delete(f"/api/v1/admin/keys/{created['id']}", headers=keys["admin"])).status_code == 204


async def test_operator_times_out_of_range_are_422(env) -> None:  # type: ignore[no-untyped-def]
    c, _, keys = env
    r = await c.put("/api/v1/downtime/press-1/0001-01-01T00:00", params={"tz": "+05:00"},
                    json={"comment": "x"}, headers=keys["operator"])
    assert r.status_code == 422 and "start" in r.json()["detail"], r.text
    r = await c.post(f"/api/v1/downtime/press-1/{iso(T0 + 600)}/split", headers=keys["operator"],
                     json={"at": "9999-12-31T23:00:00Z", "second": {"reason": "die failure"}})
    assert r.status_code == 422 and "at" in r.json()["detail"], r.text
    r = await c.put(f"/api/v1/downtime/press-1/{iso(T0 + 600)}", params={"tz": "-24:00"},
                    json={"comment": "x"}, headers=keys["operator"])
    assert r.status_code == 422 and "-23:59" in r.json()["detail"], r.text


async def test_reasons_of_another_machines_state_table_are_refused(env) -> None:  # type: ignore[no-untyped-def]
    """The plant's state tables say which reasons each machine has: a press reason on the furnace is a typo."""
    c, url, keys = env
    async with StorageWriter(url) as w:
        await w.write_state_intervals([StateInterval("furnace-1", T0, T0 + 600, "unplanned_stop", None, "plc")])
        await w.flush(10)
    furnace = (await c.get("/api/v1/reason-tree", params={"machine": "furnace-1"}, headers=keys["viewer"])).json()
    press = (await c.get("/api/v1/reason-tree", params={"machine": "press-1"}, headers=keys["viewer"])).json()
    assert "die failure" in press["categories"]["unplanned_stop"]
    assert all("die failure" not in reasons for reasons in furnace["categories"].values())
    assert (await c.get("/api/v1/reason-tree", params={"machine": "nope"}, headers=keys["viewer"])).status_code == 404
    path = f"/api/v1/downtime/furnace-1/{iso(T0)}"
    r = await c.put(path, json={"reason": "die failure"}, headers=keys["operator"])
    assert r.status_code == 422, r.text
    assert "unknown reason 'die failure'" in r.json()["detail"]
    own = furnace["categories"]["unplanned_stop"][0]
    assert own in r.json()["detail"]  # names the allowed ones
    r = await c.put(path, json={"reason": own}, headers=keys["operator"])
    assert r.status_code == 200, r.text
    # A reason tree set through the API names no machines: it applies plant-wide.
    r = await c.put("/api/v1/admin/config/reason_tree", json={"mechanical": ["die failure"]}, headers=keys["admin"])
    assert r.status_code == 200, r.text
    r = await c.put(path, json={"reason": "die failure"}, headers=keys["operator"])
    assert r.status_code == 200, r.text
