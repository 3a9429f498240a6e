"""`oee-stream api-key create|revoke`: the first admin key of a new installation, made on the server by
the real command line against the real database, opens the API; revoked, it no longer does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from oee_stream.api import ApiSettings, create_app
from oee_stream.config import Plant
from test_api import _client

CLI = [sys.executable, "-m", "oee_stream.cli"]


def _cli(*args: str, db: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                          env={"OEE_DATABASE_URL": db, "PATH": str(Path(sys.executable).parent)})


async def test_first_admin_key_from_the_cli(db: str, plant: Plant) -> None:
    bad = _cli("api-key", "create", "--name", "it admin", "--role", "boss", db=db)
    assert bad.returncode == 2 and "unknown role 'boss'" in bad.stderr and "admin" in bad.stderr

    made = _cli("api-key", "create", "--name", "it admin", "--role", "admin", db=db)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("oee_") and "shown only this once" in made.stderr and key not in made.stderr

    app = create_app(ApiSettings(database_url=db, plant=plant, cache_refresh_s=0, key_cache_ttl_s=0))
    async for client in _client(app):
        assert (await client.get("/api/v1/admin/keys")).status_code == 401
        listed = await client.get("/api/v1/admin/keys", headers={"Authorization": f"Bearer {key}"})
        assert listed.status_code == 200
        assert [k["name"] for k in listed.json()] == ["it admin"]

        key_id = key.split("_")[1]
        assert _cli("api-key", "revoke", key_id, db=db).returncode == 0
        again = _cli("api-key", "revoke", key_id, db=db)
        assert again.returncode == 2 and "no live API key" in again.stderr
        # another process revoked it: with no verification cache the very next request is refused
        gone = await client.get("/api/v1/admin/keys", headers={"Authorization": f"Bearer {key}"})
        assert gone.status_code == 401
