"""Admin routes: configuration through the API (versioned, hashed, audited), API keys, the audit log."""

from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oee_stream.api.auth import ROLES, new_key
from oee_stream.api.deps import Ctx
from oee_stream.api.models import ErrorOut
from oee_stream.api.operator import principal_of
from oee_stream.config import Product
from oee_stream.storage import edits

Section = Literal["reason_tree", "targets", "products"]
SECTIONS: tuple[str, ...] = ("reason_tree", "targets", "products")


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")

    units_per_hour: float | None = Field(default=None, gt=0, description="Production target used by the shift report.")
    target_oee: float | None = Field(default=None, ge=0, le=1, description="OEE target of the shift report and the andon board; "
                                      "replaces the plant file's target_oee.")


class ConfigOut(BaseModel):
    section: str
    version: int | None = Field(description="Version in force; null when never set through the API.")
    config_hash: str | None
    body: Any


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="Who or what uses the key.")
    role: Literal["viewer", "operator", "admin"]


class KeyCreated(BaseModel):
    id: str
    name: str
    role: str
    key: str = Field(description="The key itself. Shown only in this answer: store it now.")


def _validate(ctx: Ctx, section: str, body: Any) -> Any:
    machines = set(ctx.machine_ids)
    if not isinstance(body, dict):
        raise HTTPException(422, f"{section}: expected a JSON object")
    if section == "reason_tree":
        if not body or not all(isinstance(k, str) and isinstance(v, list) and v and all(isinstance(r, str) and r for r in v)
                               for k, v in body.items()):
            raise HTTPException(422, 'reason_tree: expected {"category": ["reason", ...], ...} with non-empty lists')
        return body
    unknown = sorted(set(body) - machines)
    if unknown:
        raise HTTPException(422, f"{section}: unknown machines {unknown}; known: {sorted(machines)}")
    try:
        if section == "targets":
            return {m: Target.model_validate(v).model_dump(exclude_none=True) for m, v in body.items()}
        return {m: {p: Product.model_validate(v).model_dump(exclude_none=True) for p, v in prods.items()}
                for m, prods in body.items()}
    except (ValidationError, AttributeError) as exc:
        raise HTTPException(422, f"{section}: {exc}") from None


def register(app: FastAPI, ctx: Ctx) -> None:
    @app.get("/api/v1/admin/config/{section}", response_model=ConfigOut, tags=["admin"],
             summary="A configuration section in force")
    async def get_config(request: Request, section: Section) -> ConfigOut:
        async with ctx.connection(request) as conn:
            cur = await edits.latest_config(conn, section)
        if cur is None:
            default: Any = ctx.default_reason_tree() if section == "reason_tree" else {}
            return ConfigOut(section=section, version=None, config_hash=None, body=default)
        return ConfigOut(section=section, version=cur[0], config_hash=cur[2], body=cur[1])

    @app.put("/api/v1/admin/config/{section}", response_model=ConfigOut, tags=["admin"],
             summary="Store a new version of a configuration section")
    async def put_config(request: Request, section: Section, body: dict[str, Any]) -> ConfigOut:
        """`reason_tree`: {category: [reason, …]} — used to validate operator reasons.
        `targets`: {machine: {units_per_hour, target_oee}} — the shift report's targets and the board's
        OEE target, in place of the plant file's `target_oee`.
        `products`: {machine: {product: {ideal_cycle_time_s | ideal_rate_per_h}}} — stored and versioned
        for the engine (which reads the plant file today). Unchanged bodies keep their version."""
        clean = _validate(ctx, section, body)
        async with ctx.connection(request) as conn:
            version, h = await edits.put_config(conn, principal_of(request).actor, section, clean)
        return ConfigOut(section=section, version=version, config_hash=h, body=clean)

    @app.get("/api/v1/admin/audit", tags=["admin"], summary="Audit log, newest first")
    async def audit(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> list[dict[str, Any]]:
        async with ctx.connection(request) as conn:
            cur = await conn.execute(
                "SELECT id, at, actor, action, target, old, new FROM audit_log ORDER BY id DESC LIMIT %s OFFSET %s",
                (limit, offset))
            rows = await cur.fetchall()
        return [dict(zip(("id", "at", "actor", "action", "target", "old", "new"), r, strict=True)) for r in rows]

    @app.get("/api/v1/admin/keys", tags=["admin"], summary="API keys (never their secrets)")
    async def keys(request: Request) -> list[dict[str, Any]]:
        async with ctx.connection(request) as conn:
            cur = await conn.execute("SELECT id, name, role, created_at, revoked_at FROM api_keys ORDER BY created_at")
            rows = await cur.fetchall()
        return [dict(zip(("id", "name", "role", "created_at", "revoked_at"), r, strict=True)) for r in rows]

    @app.post("/api/v1/admin/keys", response_model=KeyCreated, status_code=201, tags=["admin"],
              summary="Create an API key")
    async def create_key(request: Request, body: KeyIn) -> KeyCreated:
        assert body.role in ROLES
        key_id, plaintext, salt, digest = new_key()
        async with ctx.connection(request) as conn, conn.transaction():
            await conn.execute("INSERT INTO api_keys (id, name, role, salt, hash) VALUES (%s, %s, %s, %s, %s)",
                               (key_id, body.name, body.role, salt, digest))
            await edits.audit(conn, principal_of(request).actor, "create_api_key", {"key_id": key_id}, None,
                              {"name": body.name, "role": body.role})
        return KeyCreated(id=key_id, name=body.name, role=body.role, key=plaintext)

    @app.delete("/api/v1/admin/keys/{key_id}", status_code=204, tags=["admin"], summary="Revoke an API key",
                responses={404: {"model": ErrorOut, "description": "No live key with this id."}})
    async def revoke_key(request: Request, key_id: str) -> None:
        async with ctx.connection(request) as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (key_id,))
            if cur.rowcount != 1:
                raise HTTPException(404, f"no live key {key_id!r}")
            await edits.audit(conn, principal_of(request).actor, "revoke_api_key", {"key_id": key_id}, None, None)
        # Committed: this process stops accepting the key now (other API processes within a cache refresh).
        if ctx.verifier is not None:
            ctx.verifier.invalidate(key_id)
