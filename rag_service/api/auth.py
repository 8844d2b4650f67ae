"""Bearer-token guard: every route but health and metrics needs a configured token."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from rag_service.config import Settings
from rag_service.errors import Unauthorized
from rag_service.tokens import TokenStore

TOKEN_FILE = "api-token"


def accepted_tokens(connection: ASGIConnection[Any, Any, Any, Any]) -> list[str]:
    settings: Settings = connection.app.state.settings
    return [t.get_secret_value() for t in settings.api_tokens]


def token_identity(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """Which token the request carries: `settings` (RAGD_API_TOKENS or the data dir's token)
    or the id of one created through the API. Unauthorized when none matches."""
    header = connection.headers.get("authorization", "")
    scheme, _sep, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    if any(hmac.compare_digest(token, t) for t in accepted_tokens(connection)):
        return "settings"
    store: TokenStore = connection.app.state.tokens
    created = store.verify(token)
    if created is None:
        raise Unauthorized("invalid API token")
    return created.id


def require_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    token_identity(connection)


def ensure_local_token(settings: Settings) -> tuple[str, bool]:
    """The data dir's token, created on first use; returns (token, created)."""
    path: Path = settings.data_dir / TOKEN_FILE
    if path.exists():
        return path.read_text().strip(), False
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token, True
