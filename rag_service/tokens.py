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

from rag_service.errors import NotFound

STORE_FILE = "api-tokens.json"


@dataclass
class StoredToken:
    id: str
    name: str
    sha256: str
    issued_on: str
    status: str = "active"


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

    def create(self, name: str) -> tuple[StoredToken, str]:
        """A new active token and its value (never stored)."""
        value = secrets.token_urlsafe(32)
        token = StoredToken(
            id=uuid.uuid4().hex,
            name=name,
            sha256=_digest(value),
            issued_on=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
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
