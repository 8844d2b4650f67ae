"""Reading request bodies: malformed JSON and invalid fields become 400s that say what to fix.

Handlers read their bodies here rather than through a Litestar `data` parameter (for our own
messages, optional bodies and unknown-field notes), so Litestar cannot describe them in the
OpenAPI schema: `json_body(Model)` gives them an operation class that does.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
from litestar import Request
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from pydantic import BaseModel, ValidationError

from rag_service.errors import InvalidRequest

Model = TypeVar("Model", bound=BaseModel)

MAX_JSON_DEPTH = 64  # arrays and objects within each other; AI Search's bodies need 6
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENS = np.frombuffer(b"[{", np.uint8)


def validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def json_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text, counted without parsing it (so without
    recursion, however deep): brackets inside strings do not count."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = np.where(np.isin(np.frombuffer(brackets, np.uint8), _OPENS), 1, -1)
    return int(np.cumsum(steps).max())


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes | str, what: str = "body") -> Any:
    """Parse JSON from a client: too deep (more than MAX_JSON_DEPTH levels), malformed, not
    UTF-8, NaN/Infinity or a number Python refuses are each a 400 naming `what`."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise InvalidRequest(
            f"the JSON {what} is nested too deeply: {depth} levels, at most {MAX_JSON_DEPTH}"
        )
    try:
        text = data.decode("utf-8-sig")
        value = json.loads(text, parse_constant=_no_constant)
        if b"\\u" in data:  # an escape may be a lone surrogate, which no text can hold
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError as exc:  # the depth check above should make this unreachable
        raise InvalidRequest(f"the JSON {what} is nested too deeply") from exc
    except (ValueError, OverflowError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        raise InvalidRequest(f"malformed JSON {what}: {exc}") from exc
    return value


async def read_object(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The body as a JSON object; anything else is a 400 that says what to send."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("the request body is empty: send a JSON object")
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


async def read_json(request: Request[Any, Any, Any], model: type[Model]) -> Model:
    data = await read_object(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from exc


# --- The bodies in the OpenAPI schema ---------------------------------------------------------


def _keyword(field: dataclasses.Field[Any]) -> str:
    alias = field.metadata.get("alias")
    if isinstance(alias, str):
        return alias
    first, *rest = field.name.split("_")
    return first + "".join(part.title() for part in rest)


_FIELDS = {_keyword(f): f.name for f in dataclasses.fields(Schema)}
_ONE = {"items", "not", "if", "then", "else", "contains", "propertyNames", "additionalProperties"}
_MANY = {"allOf", "anyOf", "oneOf", "prefixItems"}
_MAP = {"properties", "patternProperties", "dependentSchemas"}
_FORMATS = {f.value for f in OpenAPIFormat}


def _schema(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Schema:
    """A JSON Schema (pydantic's, draft 2020-12, as OpenAPI 3.1 takes it) as Litestar's spec
    objects, with `$ref`s to `defs` inlined (request models are not recursive)."""
    if "$ref" in node:
        target = defs[str(node["$ref"]).rsplit("/", 1)[-1]]
        return _schema({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    fields: dict[str, Any] = {}
    for key, value in node.items():
        name = _FIELDS.get(key)
        if name is None or (key == "format" and value not in _FORMATS):
            continue
        if key in _ONE and isinstance(value, Mapping):
            value = _schema(value, defs)
        elif key in _MANY:
            value = [_schema(v, defs) for v in value]
        elif key in _MAP:
            value = {k: _schema(v, defs) for k, v in value.items()}
        elif key == "type":
            value = (
                [OpenAPIType(v) for v in value] if isinstance(value, list) else OpenAPIType(value)
            )
        elif key == "format":
            value = OpenAPIFormat(value)
        fields[name] = value
    return Schema(**fields)


def model_schema(model: type[BaseModel], **extra: Any) -> Schema:
    """`model`'s validation schema as an OpenAPI schema; `extra` adds or replaces keywords
    (JSON Schema spelling: `additionalProperties=True`, ...)."""
    doc = {**model.model_json_schema(mode="validation"), **extra}
    return _schema(doc, doc.pop("$defs", {}))


def json_body(
    model: type[BaseModel], *, required: bool = True, streams: bool = False, **extra: Any
) -> type[Operation]:
    """An `operation_class` for a handler that reads `model` with read_json (or an object of its
    shape with read_object): the OpenAPI operation then documents that JSON body, and with
    `streams` its answer as server-sent events too (a body asking for `stream`)."""
    body = RequestBody(
        content={"application/json": OpenAPIMediaType(schema=model_schema(model, **extra))},
        required=required,
        description=model.__doc__ and " ".join(model.__doc__.split()),
    )
    events = OpenAPIMediaType(
        schema=Schema(
            type=OpenAPIType.OBJECT,
            description="one server-sent event; its `data` is a JSON text, or [DONE] at the end",
            properties={"data": Schema(type=OpenAPIType.STRING)},
            required=["data"],
        )
    )

    @dataclasses.dataclass
    class WithJSONBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = body
            ok = (self.responses or {}).get("200")
            if streams and isinstance(ok, OpenAPIResponse):
                ok.content = {**(ok.content or {}), "text/event-stream": events}

    WithJSONBody.__name__ = WithJSONBody.__qualname__ = f"{model.__name__}Operation"
    return WithJSONBody
