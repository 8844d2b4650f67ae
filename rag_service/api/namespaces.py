"""AI Search's namespaces: create, list, read, update, delete; search and chat across a
namespace's instances; and the guard that resolves `.../namespaces/{ns}/instances/{name}` (and
the un-namespaced `.../instances/{name}`, the `default` namespace) to the instance's key."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from pydantic import Field, field_validator

from rag_service import records
from rag_service.api.errors import envelope, unused_notes
from rag_service.api.options import ChatRequest, Lenient, SearchRequest, note_messages
from rag_service.api.paging import Page, PerPage, Search, paged
from rag_service.api.requests import json_body, read_json
from rag_service.api.search import chat_reply
from rag_service.api.shapes import aisearch_search_result, instance_errors
from rag_service.api.views import iso
from rag_service.errors import InvalidRequest, NotFound
from rag_service.models import Namespace
from rag_service.namespaces import (
    DEFAULT_NAMESPACE,
    MAX_DESCRIPTION,
    MAX_NAMESPACES,
    NAME,
    check_namespace_name,
    instance_key,
)
from rag_service.paging import page_of
from rag_service.runtime import Runtime

NO_INSTANCE_IDS = (
    "ai_search_options.instance_ids is required: the names of 1 to 10 instances of this "
    "namespace to search"
)


def namespace_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The namespace a request addresses: its path's, else `default`."""
    name = connection.path_params.get("namespace", DEFAULT_NAMESPACE)
    return str(name)


async def scope_instance(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """The namespace must exist; the path's `instance_id` (a name) becomes the instance's key,
    so that every instance handler below works on keys alone."""
    namespace = namespace_of(connection)
    if namespace != DEFAULT_NAMESPACE:
        runtime: Runtime = connection.app.state.runtime
        async with runtime.sessions() as session:
            await records.get_namespace(session, namespace)
    params = connection.scope["path_params"]
    name = params.get("instance_id")
    if isinstance(name, str):
        if "." in name:  # names hold no dots: another namespace's key must not slip through
            raise NotFound(f"instance {name!r} not found in namespace {namespace!r}")
        # a new dict: the router may hand the same one to the next request for this path
        connection.scope["path_params"] = {**params, "instance_id": instance_key(namespace, name)}


def namespace_view(row: Namespace) -> dict[str, Any]:
    return {
        "name": row.name,
        "description": row.description,
        "created_at": iso(row.created_at),
        "public_endpoint_id": None,
        "public_endpoint_params": None,
    }


class NamespaceUpdate(Lenient):
    """A namespace's description (public endpoints are accepted and not used)."""

    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    public_endpoint_params: dict[str, Any] | None = None


class NamespaceCreate(NamespaceUpdate):
    name: str = Field(
        description="the new namespace's name", json_schema_extra={"pattern": f"^{NAME.pattern}$"}
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        try:
            return check_namespace_name(name)
        except InvalidRequest as exc:
            raise ValueError(exc.message) from exc


def unused_fields(body: NamespaceUpdate) -> list[str]:
    """Public endpoints are not served here."""
    return [] if body.public_endpoint_params is None else ["public_endpoint_params"]


def instance_keys(namespace: str, body: SearchRequest | ChatRequest) -> list[str]:
    names = body.ai_search_options.instance_ids
    if not names:
        raise InvalidRequest(NO_INSTANCE_IDS)
    for name in names:
        if not NAME.fullmatch(name):
            raise InvalidRequest(
                f"ai_search_options.instance_ids: {name!r} is not an instance name"
            )
    return [instance_key(namespace, name) for name in names]


class NamespacesController(Controller):
    path = "/namespaces"

    @get("/")
    async def list_namespaces(
        self,
        runtime: NamedDependency[Runtime],
        page: Page = 1,
        per_page: PerPage = 20,
        search: Search = None,
    ) -> dict[str, Any]:
        rows = await records.find_namespaces(runtime.sessions, search)
        shown = [namespace_view(r) for r in page_of(rows, page, per_page)]
        return paged(shown, page, per_page, len(rows))

    @post("/", status_code=200, operation_class=json_body(NamespaceCreate))
    async def create_namespace(
        self, runtime: NamedDependency[Runtime], request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        body = await read_json(request, NamespaceCreate)
        async with runtime.sessions() as session, session.begin():
            row = await records.create_namespace(
                session, body.name, body.description, MAX_NAMESPACES
            )
        result = envelope(namespace_view(row))
        result["messages"] = unused_notes(unused_fields(body))
        return result

    @get("/{namespace:str}")
    async def read_namespace(
        self, runtime: NamedDependency[Runtime], namespace: FromPath[str]
    ) -> dict[str, Any]:
        async with runtime.sessions() as session:
            return envelope(namespace_view(await records.get_namespace(session, namespace)))

    @put("/{namespace:str}", operation_class=json_body(NamespaceUpdate))
    async def update_namespace(
        self,
        runtime: NamedDependency[Runtime],
        request: Request[Any, Any, Any],
        namespace: FromPath[str],
    ) -> dict[str, Any]:
        body = await read_json(request, NamespaceUpdate)
        if namespace == DEFAULT_NAMESPACE:
            raise InvalidRequest("the default namespace cannot be changed")
        async with runtime.sessions() as session, session.begin():
            row = await records.get_namespace(session, namespace)
            row.description = body.description
        result = envelope(namespace_view(row))
        result["messages"] = unused_notes(unused_fields(body))
        return result

    @delete("/{namespace:str}", status_code=200)
    async def delete_namespace(
        self, runtime: NamedDependency[Runtime], namespace: FromPath[str]
    ) -> dict[str, Any]:
        if namespace == DEFAULT_NAMESPACE:
            raise InvalidRequest("the default namespace cannot be deleted")
        async with runtime.sessions() as session, session.begin():
            row = await records.delete_namespace(session, namespace)
        return envelope(namespace_view(row))

    @post("/{namespace:str}/search", status_code=200, operation_class=json_body(SearchRequest))
    async def search(
        self,
        runtime: NamedDependency[Runtime],
        request: Request[Any, Any, Any],
        namespace: FromPath[str],
    ) -> dict[str, Any]:
        """One search over up to 10 of the namespace's instances, merged by score."""
        body = await read_json(request, SearchRequest)  # the guard found the namespace
        found = await runtime.pipeline.search_across(
            instance_keys(namespace, body),
            body.question(),
            body.ai_search_options.query_options(),
            body.follow_up_of(),
        )
        shown = aisearch_search_result(found.search_query, found.chunks, found.origin)
        shown["errors"] = instance_errors(found.failed)
        result = envelope(shown)
        result["messages"] = note_messages(found.notes)
        return result

    @post(
        "/{namespace:str}/chat/completions",
        status_code=200,
        operation_class=json_body(ChatRequest, streams=True),
    )
    async def chat_completions(
        self,
        runtime: NamedDependency[Runtime],
        request: Request[Any, Any, Any],
        namespace: FromPath[str],
    ) -> Any:
        """A grounded answer over up to 10 of the namespace's instances."""
        body = await read_json(request, ChatRequest)
        reply = await runtime.pipeline.answer_across(
            instance_keys(namespace, body),
            body.question(),
            body.ai_search_options.query_options(),
            earlier=body.follow_up_of(),
            model=body.model or None,
            system_prompt=body.system_prompt(),
        )
        return await chat_reply(request, reply, body.stream, across=True)
