"""API tokens through the API, in the shape of Cloudflare's account-owned API tokens."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath
from pydantic import Field

from rag_service.api.auth import token_identity
from rag_service.api.errors import envelope
from rag_service.api.options import Lenient
from rag_service.api.paging import Page, PerPage, check_page, paged
from rag_service.api.requests import json_body, read_json
from rag_service.paging import page_of
from rag_service.tokens import StoredToken, TokenStore, scope_of

SCOPE_GROUPS = {"read": "AI Search Read", "edit": "AI Search Edit", "admin": "API Tokens Write"}


class TokenCreate(Lenient):
    """A new API token. `policies` (Cloudflare's shape) set its scope: "AI Search Read" (search
    and read), "AI Search Edit" (the whole AI Search API) or "API Tokens Write" (also tokens);
    none: edit. Anything else is refused."""

    name: str = Field(min_length=1, max_length=120)
    policies: list[dict[str, Any]] = Field(default_factory=list)


def token_view(token: StoredToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "status": token.status,
        "issued_on": token.issued_on,
        "modified_on": token.issued_on,
        "policies": [
            {"effect": "allow", "permission_groups": [{"name": SCOPE_GROUPS[token.scope]}]}
        ],
    }


def store(request: Request[Any, Any, Any]) -> TokenStore:
    tokens: TokenStore = request.app.state.tokens
    return tokens


class TokensController(Controller):
    """Tokens made here are accepted within their scope; only admin tokens (the operator's,
    or one made with "API Tokens Write") manage tokens, though any token may revoke itself."""

    path = "/tokens"

    @post("/", status_code=200, operation_class=json_body(TokenCreate))
    async def create_token(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        body = await read_json(request, TokenCreate)
        token, value = await store(request).create(body.name, scope_of(body.policies))
        return envelope({**token_view(token), "value": value})

    @get("/")
    async def list_tokens(
        self,
        request: Request[Any, Any, Any],
        page: Page = 1,
        per_page: PerPage = 20,
    ) -> dict[str, Any]:
        check_page(page, per_page)
        tokens = await store(request).list()
        shown = [token_view(t) for t in page_of(tokens, page, per_page)]
        return paged(shown, page, per_page, len(tokens))

    @get("/verify")
    async def verify(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        return envelope({"id": await token_identity(request), "status": "active"})

    @delete("/{token_id:str}", status_code=200)
    async def delete_token(
        self, request: Request[Any, Any, Any], token_id: FromPath[str]
    ) -> dict[str, Any]:
        await store(request).delete(token_id)
        return envelope({"id": token_id})
