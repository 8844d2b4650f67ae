"""AutoRAG's REST pair (`/autorag/rags/{name}/search` and `/ai-search`) and the `/search`,
`/ai-search` aliases for the default instance."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post
from litestar.params import FromPath, FromQuery
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rag_service.api.errors import envelope
from rag_service.api.options import note_messages
from rag_service.api.requests import json_body, read_json
from rag_service.api.search import cache_headers, stream_error, whole_answer
from rag_service.api.shapes import legacy_page
from rag_service.api.sse import DONE, event_stream, sse
from rag_service.instance_registry import DEFAULT_INSTANCE
from rag_service.providers.protocols import ChatMessage
from rag_service.query.options import QueryOptions, request_filter
from rag_service.runtime import Runtime


class RankingOptions(BaseModel):
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    ranker: str | None = None


class Reranking(BaseModel):
    enabled: bool | None = None  # None: the instance's setting
    model: str | None = None


class LegacySearchRequest(BaseModel):
    """AutoRAG's search and ai-search body."""

    model_config = ConfigDict(extra="ignore")

    query: str = Field(min_length=1, max_length=10_000)
    rewrite_query: bool | None = None  # None: the instance's setting
    split_exclusions: bool | None = None  # ragd's; None: the instance's setting
    max_num_results: int = Field(10, ge=1, le=50)
    ranking_options: RankingOptions = Field(default_factory=RankingOptions)
    reranking: Reranking = Field(default_factory=Reranking)
    filters: dict[str, Any] | None = None
    stream: bool = False
    model: str | None = None
    system_prompt: str | None = Field(None, max_length=20_000)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must not be blank")
        return value


LEGACY_SEARCH = json_body(LegacySearchRequest)
LEGACY_ANSWER = json_body(LegacySearchRequest, streams=True)  # `stream`: server-sent events


def query_options(body: LegacySearchRequest) -> QueryOptions:
    """AutoRAG's fields in AI Search's terms, so that both mean the same."""
    return QueryOptions(
        max_num_results=body.max_num_results,
        match_threshold=body.ranking_options.score_threshold,
        filters=request_filter(body.filters),
        rewrite=body.rewrite_query,
        split_exclusions=body.split_exclusions,
        reranking=body.reranking.enabled,
        reranking_model=body.reranking.model,
    )


# AutoRAG rewrites the query itself (there is no conversation): an empty one before it.
NO_EARLIER_TURNS: list[ChatMessage] = []


async def legacy_search(runtime: Runtime, instance_id: str, request: Request[Any, Any, Any]) -> Any:
    body = await read_json(request, LegacySearchRequest)
    found = await runtime.pipeline.search(
        instance_id, body.query, query_options(body), NO_EARLIER_TURNS
    )
    result = envelope(legacy_page(found.search_query, found.chunks))
    result["messages"] = note_messages(found.notes)
    return result


async def legacy_ai_search(
    runtime: Runtime, instance_id: str, request: Request[Any, Any, Any]
) -> Any:
    body = await read_json(request, LegacySearchRequest)
    reply = await runtime.pipeline.answer(
        instance_id,
        body.query,
        query_options(body),
        earlier=NO_EARLIER_TURNS,
        model=body.model or None,
        system_prompt=body.system_prompt,
        route="autorag",
    )
    if not body.stream:
        text = await whole_answer(request, reply)
        result = envelope(legacy_page(reply.search_query, reply.used, text))
        result["messages"] = note_messages(reply.notes)
        return Response(result, headers=cache_headers(reply))

    async def events() -> AsyncIterator[bytes]:
        try:
            async with contextlib.aclosing(reply.pieces) as pieces:
                async for piece in pieces:
                    yield sse({"response": piece})
        except Exception as exc:  # the stream has started: report in-band
            yield sse({"error": stream_error(exc)})
        yield DONE  # AutoRAG's stream is the response alone

    return event_stream(events(), cache_headers(reply))


def _runtime(request: Request[Any, Any, Any]) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@post("/search", status_code=200, operation_class=LEGACY_SEARCH)
async def search_default(
    request: Request[Any, Any, Any], instance: FromQuery[str] = DEFAULT_INSTANCE
) -> Any:
    return await legacy_search(_runtime(request), instance, request)


@post("/ai-search", status_code=200, operation_class=LEGACY_ANSWER)
async def ai_search_default(
    request: Request[Any, Any, Any], instance: FromQuery[str] = DEFAULT_INSTANCE
) -> Any:
    return await legacy_ai_search(_runtime(request), instance, request)


@post(
    "/accounts/{account_id:str}/autorag/rags/{name:str}/search",
    status_code=200,
    operation_class=LEGACY_SEARCH,
)
async def autorag_search(
    request: Request[Any, Any, Any], account_id: FromPath[str], name: FromPath[str]
) -> Any:
    return await legacy_search(_runtime(request), name, request)


@post(
    "/accounts/{account_id:str}/autorag/rags/{name:str}/ai-search",
    status_code=200,
    operation_class=LEGACY_ANSWER,
)
async def autorag_ai_search(
    request: Request[Any, Any, Any], account_id: FromPath[str], name: FromPath[str]
) -> Any:
    return await legacy_ai_search(_runtime(request), name, request)


ROUTES = [search_default, ai_search_default, autorag_search, autorag_ai_search]
__all__ = ["ROUTES", "Response"]
