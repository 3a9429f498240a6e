"""Access control: API keys (stored as salted SHA-256), roles, and the request body size limit.

A key looks like `oee_<id>_<secret>`: `id` finds the row, `secret` (256 random bits) is checked against
sha256(salt || secret) in constant time. A slow password hash buys nothing for a 256-bit random secret,
and a fast one keeps every request cheap. Clients send the key as `Authorization: Bearer <key>` or
`X-API-Key: <key>`. Keys are never logged: only their id and name appear in logs and the audit log.

Roles are ordered viewer < operator < admin. Every route except /livez needs a role: GET/HEAD need viewer
(or nothing when `anonymous_read` is on), other methods need operator, and /api/v1/admin/... needs admin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

log = structlog.get_logger(__name__)

ROLES: tuple[str, ...] = ("viewer", "operator", "admin")
RANK = {r: i for i, r in enumerate(ROLES)}
PUBLIC_PATHS = frozenset({"/livez"})
ADMIN_PREFIX = "/api/v1/admin"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str | None
    name: str
    role: str

    @property
    def actor(self) -> str:
        """How the audit log names who did it."""
        return f"{self.name} ({self.key_id})" if self.key_id else self.name


ANONYMOUS = Principal(None, "anonymous", "viewer")


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("utf-8")).digest()


def new_key() -> tuple[str, str, bytes, bytes]:
    """(key id, plaintext key, salt, hash) for a new key."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    return key_id, f"oee_{key_id}_{secret}", salt, _digest(salt, secret)


def split_key(plaintext: str) -> tuple[str, str] | None:
    parts = plaintext.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != "oee" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def create_api_key(conninfo: str, name: str, role: str) -> str:
    """Create an API key and return its plaintext, which is shown only this once (store it safely).

    Used on the server to create the first admin key (docs/api.md, quick start); later keys can be made with
    `POST /api/v1/admin/keys`. The database must be migrated."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; allowed: {list(ROLES)}")
    if not name.strip():
        raise ValueError("a key needs a name (who or what uses it)")
    key_id, plaintext, salt, digest = new_key()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO api_keys (id, name, role, salt, hash) VALUES (%s, %s, %s, %s, %s)",
                     (key_id, name.strip(), role, salt, digest))
        conn.execute("INSERT INTO audit_log (actor, action, target, new) VALUES (%s, %s, %s, %s)",
                     ("cli", "create_api_key", orjson.dumps({"key_id": key_id}).decode(),
                      orjson.dumps({"name": name.strip(), "role": role}).decode()))
    log.info("api_key_created", key_id=key_id, name=name, role=role)
    return plaintext


def revoke_api_key(conninfo: str, key_id: str) -> bool:
    """Revoke a key by id (the part after `oee_`); True when a live key was revoked."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cur = conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL", (key_id,))
        done = cur.rowcount == 1
        if done:
            conn.execute("INSERT INTO audit_log (actor, action, target) VALUES (%s, %s, %s)",
                         ("cli", "revoke_api_key", orjson.dumps({"key_id": key_id}).decode()))
    return done


def list_api_keys(conninfo: str) -> list[dict[str, Any]]:
    """Keys without secrets: id, name, role, created_at, revoked_at."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT id, name, role, created_at, revoked_at FROM api_keys ORDER BY created_at").fetchall()
    return [dict(zip(("id", "name", "role", "created_at", "revoked_at"), r, strict=True)) for r in rows]


class KeyVerifier:
    """Checks presented keys against the database; a verified key is remembered for `ttl_s` seconds
    (in memory, by the SHA-256 of the presented key — never the key itself), so most requests need no
    database round trip. A revocation takes effect at once in this process (`invalidate`, called by
    `DELETE /api/v1/admin/keys/{id}`), within a refresh interval in other API processes that run the live
    cache (`poll_revocations`), and within `ttl_s` everywhere else."""

    def __init__(self, ttl_s: float = 30.0) -> None:
        self.ttl_s = ttl_s
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        self._revocations_seen: datetime | None = None
        self.lookups = 0  # database look-ups (cache misses), for tests and metrics

    def cached(self, plaintext: str) -> tuple[bool, Principal | None]:
        """(hit, principal) from memory only; principal None on a hit means a known-bad key."""
        hit = self._cache.get(hashlib.sha256(plaintext.encode("utf-8")).digest())
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def invalidate(self, key_id: str) -> None:
        """Forget every cached verification of key `key_id` (after it was revoked)."""
        for fp in [fp for fp, (_, p) in self._cache.items() if p is not None and p.key_id == key_id]:
            self._cache.pop(fp, None)

    async def poll_revocations(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Invalidate keys revoked since the last poll (with a margin for clock steps and commit order)."""
        cur = await conn.execute(
            "SELECT now(), array(SELECT id FROM api_keys WHERE %(since)s::timestamptz IS NOT NULL "
            "AND revoked_at >= %(since)s::timestamptz - interval '30 seconds')",
            {"since": self._revocations_seen})
        row = await cur.fetchone()
        if row is None:
            return
        self._revocations_seen = row[0]
        for key_id in row[1] or ():
            self.invalidate(key_id)

    async def verify(self, conn: psycopg.AsyncConnection[Any], plaintext: str) -> Principal | None:
        fp = hashlib.sha256(plaintext.encode("utf-8")).digest()
        hit = self._cache.get(fp)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        self.lookups += 1
        parts = split_key(plaintext)
        principal: Principal | None = None
        if parts is not None:
            key_id, secret = parts
            cur = await conn.execute(
                "SELECT name, role, salt, hash FROM api_keys WHERE id = %s AND revoked_at IS NULL", (key_id,))
            row = await cur.fetchone()
            if row is not None and hmac.compare_digest(_digest(bytes(row[2]), secret), bytes(row[3])):
                principal = Principal(key_id, row[0], row[1])
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[fp] = (now + self.ttl_s, principal)
        return principal


def required_role(method: str, path: str) -> str | None:
    if path in PUBLIC_PATHS:
        return None
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        return "admin"
    return "viewer" if method in READ_METHODS else "operator"


def _credential(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            v = value.decode("latin-1")
            if v[:7].lower() == "bearer ":
                return v[7:].strip() or None
        elif name == b"x-api-key":
            return value.decode("latin-1").strip() or None
    return None


async def _json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class AccessMiddleware:
    """Pure ASGI (streams stay streams): body size limit, then authentication and role check."""

    def __init__(self, app: ASGIApp, *, pool: Callable[[], AsyncConnectionPool[Any]], anonymous_read: bool,
                 max_body_bytes: int, timeout_s: float, verifier: KeyVerifier | None = None) -> None:
        self.app = app
        self.pool = pool
        self.anonymous_read = anonymous_read
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.verifier = verifier or KeyVerifier()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        # Body size: refuse early on Content-Length, and never buffer more than the limit otherwise.
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                await _json(send, 413, f"request body too large: at most {self.max_body_bytes} bytes")
                return
        if method not in READ_METHODS:
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    await _json(send, 413, f"request body too large: at most {self.max_body_bytes} bytes")
                    return
                chunks.append(chunk)
                more = msg.get("more_body", False)
            body = b"".join(chunks)
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            receive = replay

        need = required_role(method, path)
        principal: Principal | None = None
        if need is not None:
            cred = _credential(scope)
            if cred is None:
                if self.anonymous_read and need == "viewer":
                    principal = ANONYMOUS
                else:
                    await _json(send, 401, "authentication required: send 'Authorization: Bearer <api key>' "
                                           "or 'X-API-Key: <api key>'", [(b"www-authenticate", b"Bearer")])
                    return
            else:
                # A key verified moments ago needs no database round trip (see KeyVerifier).
                hit, principal = self.verifier.cached(cred)
                if not hit:
                    try:
                        async with self.pool().connection(timeout=self.timeout_s) as conn:
                            principal = await self.verifier.verify(conn, cred)
                    except (PoolTimeout, psycopg.Error) as exc:
                        log.warning("auth_database_unavailable", path=path, error=type(exc).__name__)
                        await _json(send, 503, "database unavailable, try again shortly")
                        return
                if principal is None:
                    log.info("auth_rejected", path=path, method=method)
                    await _json(send, 401, "invalid or revoked API key", [(b"www-authenticate", b"Bearer")])
                    return
            if RANK[principal.role] < RANK[need]:
                await _json(send, 403, f"{method} {path} needs role {need!r}; this key has {principal.role!r}")
                return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
