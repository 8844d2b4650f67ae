"""API tokens created through the API, kept in the data dir as SHA-256 hashes only: the value
is shown once, when the token is created."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from rag_service.errors import InvalidRequest, NotFound

STORE_FILE = "api-tokens.json"


Scope = Literal["read", "edit", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "edit", "admin")  # each allows what the ones before do
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


class TokenStore:
    """The file is re-read when it changes, so tokens made by another process count too."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / STORE_FILE
        self._lock = threading.Lock()
        self._seen: tuple[float, int] | None = None
        self._tokens: list[StoredToken] = []

    def _load(self) -> list[StoredToken]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._tokens = None, []
            return self._tokens
        if self._seen != (st.st_mtime, st.st_size):
            raw = json.loads(self.path.read_text() or "[]")
            self._tokens = [StoredToken(**t) for t in raw]
            self._seen = (st.st_mtime, st.st_size)
        return self._tokens

    def _save(self, tokens: list[StoredToken]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([asdict(t) for t in tokens], f, indent=1)
        os.replace(tmp, self.path)
        self._seen = None

    def create(self, name: str, scope: Scope = "edit") -> tuple[StoredToken, str]:
        """A new active token and its value (never stored)."""
        value = secrets.token_urlsafe(32)
        token = StoredToken(
            id=uuid.uuid4().hex,
            name=name,
            sha256=_digest(value),
            issued_on=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            scope=scope,
        )
        with self._lock:
            self._save([*self._load(), token])
        return token, value

    def list(self) -> list[StoredToken]:
        with self._lock:
            return list(self._load())

    def delete(self, token_id: str) -> StoredToken:
        with self._lock:
            tokens = self._load()
            kept = [t for t in tokens if t.id != token_id]
            if len(kept) == len(tokens):
                raise NotFound(f"token {token_id!r} not found")
            self._save(kept)
        return next(t for t in tokens if t.id == token_id)

    def verify(self, value: str) -> StoredToken | None:
        digest = _digest(value)
        with self._lock:
            tokens = self._load()
        found = None
        for t in tokens:
            if hmac.compare_digest(t.sha256, digest) and t.status == "active":
                found = t
        return found
