"""AI Search's search and chat completions over one instance."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from rag_service.api.errors import envelope
from rag_service.api.options import ChatRequest, SearchRequest, note_messages
from rag_service.api.requests import json_body, read_json
from rag_service.api.shapes import aisearch_chunks, aisearch_search_result, instance_errors
from rag_service.api.sse import DONE, event_stream, sse
from rag_service.errors import ClientGone, RagError, public_message
from rag_service.query.pipeline import Answer
from rag_service.runtime import Runtime

log = logging.getLogger(__name__)
CACHE_STATUS = "cf-aig-cache-status"  # AI Search's header: HIT or MISS


async def whole_answer(request: Request[Any, Any, Any], reply: Answer) -> str:
    """The answer in one piece, unless the client hangs up first: then generation stops (a
    model left writing for nobody slows every other answer) and the request ends."""

    async def write() -> str:
        async with contextlib.aclosing(reply.pieces) as pieces:
            return "".join([p async for p in pieces])

    async def hang_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    writing, watching = asyncio.create_task(write()), asyncio.create_task(hang_up())
    try:
        await asyncio.wait({writing, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (writing, watching):
            if not task.done():
                task.cancel()
        await asyncio.gather(writing, watching, return_exceptions=True)
    if not writing.done() or writing.cancelled():
        raise ClientGone("the client closed the connection before the answer was written")
    return writing.result()


def stream_error(exc: Exception) -> str:
    """What a stream that already started says of a failure (in-band, as its last event)."""
    if isinstance(exc, RagError):
        return public_message(exc)
    log.exception("answer stream failed")
    return "generation failed"


def cache_headers(reply: Answer) -> dict[str, str]:
    return {CACHE_STATUS: reply.cache_status} if reply.cache_status else {}


def completion(completion_id: str, reply: Answer, text: str, across: bool) -> dict[str, Any]:
    """OpenAI's chat completion with AI Search's `chunks` (and, across instances, `errors`)."""
    usage = reply.usage
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
        "chunks": aisearch_chunks(reply.used, reply.origin if across else None),
    }
    if across:
        body["errors"] = instance_errors(reply.failed)
    return body


def delta(completion_id: str, model: str, content: str | None, finish: str | None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": finish}
    if content is not None:
        choice["delta"] = {"role": "assistant", "content": content}
    return sse(
        {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
        }
    )


class SearchController(Controller):
    path = "/instances/{instance_id:str}"

    @post("/search", status_code=200, operation_class=json_body(SearchRequest))
    async def search(
        self,
        runtime: NamedDependency[Runtime],
        request: Request[Any, Any, Any],
        instance_id: FromPath[str],
    ) -> dict[str, Any]:
        body = await read_json(request, SearchRequest)
        found = await runtime.pipeline.search(
            instance_id, body.question(), body.ai_search_options.query_options(),
            body.follow_up_of(),
        )  # fmt: skip
        result = envelope(aisearch_search_result(found.search_query, found.chunks))
        result["messages"] = note_messages(found.notes)
        return result

    @post(
        "/chat/completions", status_code=200, operation_class=json_body(ChatRequest, streams=True)
    )
    async def chat_completions(
        self,
        runtime: NamedDependency[Runtime],
        request: Request[Any, Any, Any],
        instance_id: FromPath[str],
    ) -> Any:
        body = await read_json(request, ChatRequest)
        reply = await runtime.pipeline.answer(
            instance_id,
            body.question(),
            body.ai_search_options.query_options(),
            earlier=body.follow_up_of(),
            model=body.model or None,
            system_prompt=body.system_prompt(),
            route="chat",
        )
        return await chat_reply(request, reply, body.stream)


async def chat_reply(
    request: Request[Any, Any, Any], reply: Answer, stream: bool, across: bool = False
) -> Any:
    """The answer as one chat completion, or streamed."""
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if not stream:
        text = await whole_answer(request, reply)
        return Response(
            completion(completion_id, reply, text, across), headers=cache_headers(reply)
        )
    return event_stream(streamed(completion_id, reply, across), cache_headers(reply))


async def streamed(completion_id: str, reply: Answer, across: bool) -> AsyncIterator[bytes]:
    """AI Search's order: the retrieved chunks first (`event: chunks`), then OpenAI's chunk
    events as the model writes, then `[DONE]`. Across instances, the instances that failed
    follow the chunks as `event: errors` (the non-streamed body's `errors`)."""
    yield sse(aisearch_chunks(reply.used, reply.origin if across else None), event="chunks")
    if across and reply.failed:
        yield sse(instance_errors(reply.failed), event="errors")
    try:
        async with contextlib.aclosing(reply.pieces) as pieces:
            async for piece in pieces:
                yield delta(completion_id, reply.model, piece, None)
        yield delta(completion_id, reply.model, None, "stop")
    except Exception as exc:  # the stream has started: report in-band
        yield sse({"error": {"message": stream_error(exc)}})
    yield DONE
