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

TOKEN_FILE = "api-token"


def accepted_tokens(connection: ASGIConnection[Any, Any, Any, Any]) -> list[str]:
    settings: Settings = connection.app.state.settings
    return [t.get_secret_value() for t in settings.api_tokens]


def require_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    header = connection.headers.get("authorization", "")
    scheme, _sep, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    if not any(hmac.compare_digest(token.strip(), t) for t in accepted_tokens(connection)):
        raise Unauthorized("invalid API token")


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
