"""Reading request bodies: malformed JSON and invalid fields become 400s that say what to fix."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from litestar import Request
from pydantic import BaseModel, ValidationError

from rag_service.errors import InvalidRequest

Model = TypeVar("Model", bound=BaseModel)


def validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


async def read_object(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The body as a JSON object; anything else is a 400 that says what to send."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("the request body is empty: send a JSON object")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


async def read_json(request: Request[Any, Any, Any], model: type[Model]) -> Model:
    data = await read_object(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from exc
