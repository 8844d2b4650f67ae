"""One grounded answer for the chat and AutoRAG routes: from the similarity cache when the plan
turns it on and a near-identical prompt was answered from unchanged chunks, else rewrite ->
retrieve -> rerank -> generate, remembered once the whole answer is out."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rag_service.api.options import SearchPlan, search_query
from rag_service.providers.protocols import ChatMessage, Usage
from rag_service.retrieve.cache import (
    DEFAULT_TTL,
    AnswerCache,
    CachedAnswer,
    CacheThreshold,
    chunks_unchanged,
)
from rag_service.retrieve.generate import generate_answer
from rag_service.retrieve.search import ScoredChunk
from rag_service.runtime import Runtime

CACHE_STATUS = "cf-aig-cache-status"  # AI Search's header: HIT or MISS


@dataclass
class CacheUse:
    cache: AnswerCache
    scope: str  # everything but the prompt that shapes the answer, hashed
    prompt: str
    level: CacheThreshold


@dataclass
class Answer:
    model: str
    search_query: str
    used: list[ScoredChunk]  # the sources, in rank order
    pieces: AsyncGenerator[str, None]  # the answer as it is written (a cached one, whole)
    usage: Usage = field(default_factory=Usage)
    headers: dict[str, str] = field(default_factory=dict)


async def answer(
    runtime: Runtime,
    instance_id: str,
    plan: SearchPlan,
    question: str,
    *,
    route: str,
    earlier: Sequence[ChatMessage] | None,
    model: str | None = None,
    system_prompt: str | None = None,
) -> Answer:
    """`earlier`: the conversation before `question` (None: a first message or bare query)."""
    use = await cache_use(
        runtime,
        instance_id,
        plan,
        question,
        route=route,
        earlier=earlier,
        model=model,
        system_prompt=system_prompt,
    )
    hit = await cached(runtime, instance_id, use)
    if hit is not None:
        return Answer(hit.model, question, hit.chunks, _once(hit.answer), headers=_status("HIT"))
    rewritten = await search_query(runtime, instance_id, plan, question, earlier, model)
    generator, prompt = await runtime.answer_prompt(
        instance_id,
        question,
        plan.retrieval,
        model=model,
        system_prompt=system_prompt,
        reranking=plan.reranking,
        search_query=rewritten,
    )
    usage = Usage()
    pieces = generate_answer(generator, prompt, runtime.settings.generation_max_tokens, usage)
    if use is not None and prompt.used:
        pieces = _remembered(pieces, use, generator.model_id, prompt.used)
    headers = _status("MISS") if use is not None else {}
    return Answer(generator.model_id, rewritten, prompt.used, pieces, usage, headers)


async def cache_use(
    runtime: Runtime, instance_id: str, plan: SearchPlan, prompt: str, **request: Any
) -> CacheUse | None:
    """The cache of this instance for this request, when the plan turns it on. The scope holds
    the instance's settings, the request's options and `request` (model, system prompt,
    conversation): an answer is only reused for the same filters, models and prompts."""
    if plan.cache is None:
        return None
    cfg = await runtime.instance_config(instance_id)
    settings = runtime.settings
    scope = {
        "instance": cfg.model_dump(mode="json"),
        "generation": [settings.generation_model, settings.generation_url],
        "max_tokens": settings.generation_max_tokens,
        "retrieval": asdict(plan.retrieval),
        "rewrite": asdict(plan.rewrite) if plan.rewrite else None,
        "split_exclusions": plan.split_exclusions,
        "reranking": asdict(plan.reranking) if plan.reranking else None,
        "context_expansion": plan.context_expansion,
        **request,
    }
    digest = hashlib.sha256(json.dumps(scope, sort_keys=True, default=str).encode()).hexdigest()
    ttl = getattr(cfg, "cache_ttl", None) or DEFAULT_TTL
    cache = AnswerCache.for_instance(settings.instance_dir(instance_id), ttl)
    return CacheUse(cache, digest, prompt, plan.cache)


async def cached(runtime: Runtime, instance_id: str, use: CacheUse | None) -> CachedAnswer | None:
    """A live entry whose chunks are all still in the index unchanged; a stale one is dropped."""
    if use is None:
        return None
    hit = await use.cache.lookup(use.scope, use.prompt, use.level)
    if hit is None:
        return None
    cfg = await runtime.instance_config(instance_id)
    if await chunks_unchanged(await runtime.index(instance_id, cfg), hit):
        return hit
    await use.cache.drop(hit.entry_id)
    return None


async def _remembered(
    pieces: AsyncGenerator[str, None], use: CacheUse, model: str, used: list[ScoredChunk]
) -> AsyncGenerator[str, None]:
    """`pieces`, then the whole answer stored; an answer cut short (error, hang-up) is not."""
    text: list[str] = []
    async with contextlib.aclosing(pieces):  # a hang-up stops the model too
        async for piece in pieces:
            text.append(piece)
            yield piece
    await use.cache.store(use.scope, use.prompt, model, "".join(text), used)


async def _once(text: str) -> AsyncGenerator[str, None]:
    yield text


def _status(value: str) -> dict[str, str]:
    return {CACHE_STATUS: value}
