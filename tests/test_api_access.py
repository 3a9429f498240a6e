"""Access control: every route needs its role (parametrized over the app's own routes), keys are stored
hashed, anonymous read is GET-only, request bodies are limited, and secrets do not reach the logs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
from starlette.routing import Mount, Route

from oee_stream.api import ApiSettings, create_app
from oee_stream.api.auth import create_api_key, list_api_keys, required_role, revoke_api_key
from oee_stream.config import load_plant
from oee_stream.engine.result import iso
from oee_stream.storage.migrations import migrate
from test_api import _client
from test_storage import T0

DEMO = Path(__file__).resolve().parents[1] / "deploy" / "demo" / "plant.yaml"
PLANT = load_plant(DEMO)
FILL = {"machine_id": "press-1", "entity_id": "press-1", "start": iso(T0), "section": "targets", "key_id": "nope"}


def _routes() -> list[tuple[str, str]]:
    app = create_app(ApiSettings(database_url="postgresql://unused", plant=PLANT))
    out: list[tuple[str, str]] = []
    for r in app.routes:
        if isinstance(r, Route):
            path = re.sub(r"\{(\w+)\}", lambda m: FILL[m.group(1)], r.path)
            out += [(m, path) for m in sorted(r.methods or ()) if m != "HEAD"]
        elif isinstance(r, Mount):
            out.append(("GET", r.path + "/"))
    return out


ROUTES = _routes()
RANK = {None: -1, "viewer": 0, "operator": 1, "admin": 2}


def test_every_route_is_classified() -> None:
    paths = {p for _, p in ROUTES}
    assert {"/livez", "/readyz", "/metrics/", "/docs", "/openapi.json", "/api/v1/stream", "/api/v1/plant"} <= paths
    assert required_role("GET", "/livez") is None
    assert required_role("PUT", f"/api/v1/downtime/press-1/{iso(T0)}") == "operator"
    assert required_role("GET", "/api/v1/admin/keys") == "admin"


@pytest.fixture(scope="module")
def keyed_db(database_url: str) -> AsyncIterator[tuple[str, dict[str, str]]]:
    from harness import temporary_database

    with temporary_database(database_url) as url:
        migrate(url)
        keys = {role: create_api_key(url, f"test {role}", role) for role in ("viewer", "operator", "admin")}
        yield url, keys


async def _app_client(url: str, **kw: object) -> AsyncIterator[httpx.AsyncClient]:
    settings = ApiSettings(database_url=url, plant=PLANT, **kw)  # type: ignore[arg-type]
    async for c in _client(create_app(settings)):
        yield c


@pytest.fixture
async def client(keyed_db: tuple[str, dict[str, str]]) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _app_client(keyed_db[0]):
        yield c


@pytest.fixture
async def anon_client(keyed_db: tuple[str, dict[str, str]]) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _app_client(keyed_db[0], anonymous_read=True):
        yield c


async def _call(c: httpx.AsyncClient, method: str, path: str, headers: dict[str, str] | None = None) -> int:
    body = b"{}" if method in ("PUT", "POST") else None
    h = {"content-type": "application/json", **(headers or {})}
    return (await c.request(method, path, content=body, headers=h)).status_code


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_roles_enforced_on_every_route(
    client: httpx.AsyncClient, anon_client: httpx.AsyncClient, keyed_db: tuple[str, dict[str, str]],
    method: str, path: str,
) -> None:
    need = required_role(method, path)
    keys = keyed_db[1]
    streaming = path == "/api/v1/stream"  # endless: only the refusals are checked here
    if need is None:
        assert await _call(client, method, path) == 200
        return
    assert await _call(client, method, path) == 401
    assert await _call(client, method, path, {"Authorization": "Bearer oee_bad_key"}) == 401
    anon = await _call(anon_client, method, path) if not (streaming and need == "viewer") else 200
    assert (anon not in (401, 403)) if need == "viewer" else anon == 401
    for role, key in keys.items():
        if streaming and RANK[role] >= RANK[need]:
            continue
        status = await _call(client, method, path, {"Authorization": f"Bearer {key}"})
        if RANK[role] < RANK[need]:
            assert status == 403, (role, status)
        else:
            assert status not in (401, 403), (role, status)


async def test_keys_are_hashed_and_revocable(keyed_db: tuple[str, dict[str, str]]) -> None:
    url, _keys = keyed_db
    extra = create_api_key(url, "line 3 tablet", "operator")
    key_id = extra.split("_")[1]
    with psycopg.connect(url) as conn:
        rows = conn.execute("select id, salt, hash from api_keys").fetchall()
    secret = extra.split("_", 2)[2].encode()
    for _, salt, digest in rows:
        assert secret not in bytes(digest) and len(bytes(salt)) == 16
    assert {r[1] for r in rows if r[0] == key_id}  # one row for it
    assert all(extra not in str(k) for k in list_api_keys(url))
    async for c in _app_client(url, key_cache_ttl_s=0.0):
        assert (await c.get("/api/v1/plant", headers={"X-API-Key": extra})).status_code == 200
        assert revoke_api_key(url, key_id) and not revoke_api_key(url, key_id)
        r = await c.get("/api/v1/plant", headers={"X-API-Key": extra})
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
    with pytest.raises(ValueError, match="role"):
        create_api_key(url, "x", "superuser")


async def test_body_limit_and_no_secrets_in_logs(keyed_db: tuple[str, dict[str, str]],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    url, keys = keyed_db
    async for c in _app_client(url, max_body_bytes=100):
        h = {"Authorization": f"Bearer {keys['operator']}", "content-type": "application/json"}
        r = await c.put(f"/api/v1/downtime/press-1/{iso(T0)}", content=b'{"comment": "' + b"x" * 200 + b'"}', headers=h)
        assert r.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
            for _ in range(10):
                yield b"x" * 50

        r = await c.put(f"/api/v1/downtime/press-1/{iso(T0)}", content=chunks(), headers=h)
        assert r.status_code == 413
        await c.get("/api/v1/plant", headers={"Authorization": "Bearer oee_abc_wrongsecret"})
    out = capsys.readouterr()
    for k in keys.values():
        assert k not in out.out and k not in out.err
    assert "wrongsecret" not in out.out + out.err


async def test_openapi_declares_the_security_schemes(client: httpx.AsyncClient,
                                                     keyed_db: tuple[str, dict[str, str]]) -> None:
    spec = (await client.get("/openapi.json", headers={"X-API-Key": keyed_db[1]["viewer"]})).json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
