"""API tokens created through the API, kept in the metadata database as SHA-256 hashes only:
the value is shown once, when the token is created."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rag_service.errors import InvalidRequest, NotFound
from rag_service.models import ApiToken

STORE_FILE = "api-tokens.json"


Scope = Literal["read", "edit", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "edit", "admin")  # each allows what the ones before do
_SCOPE_NAMED: dict[str, Scope] = {s: s for s in SCOPES}
# Cloudflare permission-group names a token's policies may use, and the scope each grants.
PERMISSION_GROUPS: dict[str, Scope] = {
    "ai search read": "read",
    "autorag read": "read",
    "ai search edit": "edit",
    "ai search write": "edit",
    "ai search run": "edit",
    "autorag write": "edit",
    "api tokens write": "admin",
    "api tokens edit": "admin",
}


def scope_of(policies: list[dict[str, Any]]) -> Scope:
    """The scope a token's Cloudflare-style policies grant: the widest permission group named
    by an `allow` policy; no policy means `edit` (the whole AI Search API, not tokens). A
    policy ragd cannot honour is refused, never read as admin."""
    granted: list[Scope] = []
    for n, policy in enumerate(policies):
        if not isinstance(policy, dict) or policy.get("effect", "allow") != "allow":
            raise InvalidRequest(f"policies[{n}]: only 'allow' policies are supported")
        groups = policy.get("permission_groups")
        if not isinstance(groups, list) or not groups:
            raise InvalidRequest(f"policies[{n}]: permission_groups must list at least one group")
        for group in groups:
            name = group.get("name") if isinstance(group, dict) else None
            scope = PERMISSION_GROUPS.get(str(name).strip().lower()) if name else None
            if scope is None:
                known = ", ".join(sorted({k.title() for k in PERMISSION_GROUPS}))
                raise InvalidRequest(
                    f"policies[{n}]: unknown permission group {str(name)[:80]!r}; known: {known}"
                )
            granted.append(scope)
    return max(granted, key=SCOPES.index) if granted else "edit"


@dataclass
class StoredToken:
    id: str
    name: str
    sha256: str
    issued_on: str
    status: str = "active"
    scope: Scope = "edit"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _stored(row: ApiToken) -> StoredToken:
    scope = _SCOPE_NAMED.get(row.scope, "read")  # an unknown one grants the least
    issued = row.issued_on.isoformat().replace("+00:00", "Z")
    return StoredToken(row.id, row.name, row.sha256, issued, row.status, scope)


class TokenStore:
    """Tokens in the metadata database, so that every API process accepts the same ones."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def create(self, name: str, scope: Scope = "edit") -> tuple[StoredToken, str]:
        """A new active token and its value (never stored)."""
        value = secrets.token_urlsafe(32)
        row = ApiToken(id=uuid.uuid4().hex, name=name, sha256=_digest(value), scope=scope)
        async with self.sessions() as session, session.begin():
            session.add(row)
        return _stored(row), value

    async def list(self) -> list[StoredToken]:
        async with self.sessions() as session:
            rows = await session.scalars(select(ApiToken).order_by(ApiToken.issued_on))
            return [_stored(r) for r in rows]

    async def delete(self, token_id: str) -> StoredToken:
        async with self.sessions() as session, session.begin():
            row = await session.get(ApiToken, token_id)
            if row is None:
                raise NotFound(f"token {token_id!r} not found")
            await session.delete(row)
        return _stored(row)

    async def verify(self, value: str) -> StoredToken | None:
        async with self.sessions() as session:
            row = await session.scalar(select(ApiToken).where(ApiToken.sha256 == _digest(value)))
        return _stored(row) if row is not None and row.status == "active" else None

    async def import_file(self, data_dir: Path) -> int:
        """Tokens an earlier version kept in the data dir's STORE_FILE, moved into the
        database once (the file is renamed `.imported`); returns how many were new."""
        path = data_dir / STORE_FILE
        if not path.exists():
            return 0
        raw: list[dict[str, Any]] = json.loads(path.read_text() or "[]")
        added = 0
        async with self.sessions() as session, session.begin():
            for t in raw:
                if await session.get(ApiToken, t["id"]) is None:
                    issued = datetime.fromisoformat(t["issued_on"].replace("Z", "+00:00"))
                    session.add(
                        ApiToken(
                            id=t["id"],
                            name=t["name"],
                            sha256=t["sha256"],
                            scope=t.get("scope", "edit"),
                            status=t.get("status", "active"),
                            issued_on=issued,
                        )
                    )
                    added += 1
        path.rename(path.with_name(path.name + ".imported"))
        return added
