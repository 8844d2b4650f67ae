"""Bearer-token guard: every route but health and metrics needs a configured token."""

from __future__ import annotations

import hmac
import re
import secrets
from pathlib import Path
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from rag_service.config import Settings
from rag_service.errors import Forbidden, Unauthorized
from rag_service.tokens import SCOPES, Scope, TokenStore

TOKEN_FILE = "api-token"


def accepted_tokens(connection: ASGIConnection[Any, Any, Any, Any]) -> list[str]:
    settings: Settings = connection.app.state.settings
    return [t.get_secret_value() for t in settings.api_tokens]


async def token_identity(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """Which token the request carries: `settings` (RAGD_API_TOKENS or the data dir's token)
    or the id of one created through the API. Unauthorized when none matches."""
    return (await token_of(connection))[0]


async def token_of(connection: ASGIConnection[Any, Any, Any, Any]) -> tuple[str, Scope]:
    """(identity, scope) of the request's token; the operator's tokens are admin."""
    header = connection.headers.get("authorization", "")
    scheme, _sep, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    if any(hmac.compare_digest(token, t) for t in accepted_tokens(connection)):
        return "settings", "admin"
    store: TokenStore = connection.app.state.tokens
    created = await store.verify(token)
    if created is None:
        raise Unauthorized("invalid API token")
    return created.id, created.scope


# Requests that only read, though sent as POST: searches and answers.
_READING_POSTS = re.compile(r"/(search|chat/completions|ai-search)$")


def _method(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return str(connection.scope.get("method", ""))


def needed_scope(connection: ASGIConnection[Any, Any, Any, Any]) -> Scope:
    path = connection.url.path.rstrip("/")
    if "/tokens" in path and not path.endswith("/tokens/verify"):
        return "admin"  # deleting one's own token is allowed in the route
    if _method(connection) in ("GET", "HEAD") or _READING_POSTS.search(path):
        return "read"
    return "edit"


async def require_token(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """A valid token whose scope covers the request (read < edit < admin)."""
    identity, scope = await token_of(connection)
    needed = needed_scope(connection)
    if SCOPES.index(scope) >= SCOPES.index(needed):
        return
    own_token = _method(connection) == "DELETE" and connection.url.path.rstrip("/").endswith(
        f"/tokens/{identity}"
    )
    if not own_token:
        raise Forbidden(f"this token may {scope} but the request needs {needed}")


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
