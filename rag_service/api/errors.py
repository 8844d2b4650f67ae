"""Cloudflare's envelope, and the one place our errors become HTTP responses."""

from __future__ import annotations

import copy
import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.types import ExceptionHandlersMap

from rag_service.errors import RagError, UpstreamError, public_message

log = logging.getLogger(__name__)


def envelope(result: Any, result_info: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return body


def unused_notes(unused: list[str]) -> list[dict[str, Any]]:
    """`messages` naming the request fields accepted but not used here."""
    if not unused:
        return []
    return [{"code": 7200, "message": f"accepted but not used here: {', '.join(unused)}"}]


def error_body(code: int, message: str) -> dict[str, Any]:
    return {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": None,
    }


def _respond(status: int, code: int, message: str) -> Response[dict[str, Any]]:
    return Response(error_body(code, message), status_code=status)


def rag_error_handler(request: Request[Any, Any, Any], exc: RagError) -> Response[dict[str, Any]]:
    """Our errors as Cloudflare's envelope; an upstream's own words go to the log only."""
    status = exc.status_code if exc.status_code < 500 else 502
    if isinstance(exc, UpstreamError):
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return _respond(status, exc.code, public_message(exc))


def http_error_handler(
    request: Request[Any, Any, Any], exc: HTTPException
) -> Response[dict[str, Any]]:
    message = exc.detail or "request failed"
    if message.startswith("Validation failed for "):  # Litestar's names the URL: drop its query
        message = f"Validation failed for {request.method} {request.url.path}"
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        first = exc.extra[0]
        if isinstance(first, dict) and first.get("message"):
            message = f"{message}: {first.get('key', '')} {first['message']}".strip()
    if isinstance(exc, NotFoundException):
        message = "no such route"
    return _respond(exc.status_code, 7000 + exc.status_code, message)


def unexpected_error_handler(
    request: Request[Any, Any, Any], exc: Exception
) -> Response[dict[str, Any]]:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _respond(500, 7500, "internal error")


# --- The same in the OpenAPI schema ----------------------------------------------------------

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Cloudflare's envelope of a failed request",
    "required": ["success", "errors", "messages", "result"],
    "properties": {
        "success": {"const": False},
        "errors": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
            },
        },
        "messages": {"type": "array"},
        "result": {"type": "null"},
    },
}
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI document (as a dict) whose operations answer client mistakes (any 4xx) with
    ERROR_SCHEMA, as the handlers above make them do, not with Litestar's own error body."""
    out = copy.deepcopy(schema)
    out.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for item in out.get("paths", {}).values():
        for method in _METHODS:
            responses = item.get(method, {}).get("responses")
            if responses is None:
                continue
            for status, response in list(responses.items()):
                if status.startswith("4"):
                    responses[status] = {**response, "content": content}
            responses.setdefault("4XX", {"description": "A client mistake", "content": content})
    return out


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    RagError: rag_error_handler,
    HTTPException: http_error_handler,
    Exception: unexpected_error_handler,
}
