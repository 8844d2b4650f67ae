"""The similarity cache around an answer: which cache and scope a request uses, a hit that is
still grounded on unchanged chunks, and an answer stored once it is whole."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncGenerator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rag_service.config import Settings
from rag_service.instances import InstanceConfig
from rag_service.providers.protocols import VectorIndex
from rag_service.query.options import Plan
from rag_service.retrieve.cache import (
    DEFAULT_TTL,
    AnswerCache,
    CachedAnswer,
    CacheThreshold,
    Sessions,
    chunks_unchanged,
)
from rag_service.retrieve.search import ScoredChunk


@dataclass
class AnswerCacheUse:
    cache: AnswerCache
    scope: str  # everything but the prompt that shapes the answer, hashed
    prompt: str
    level: CacheThreshold


def cache_use(
    settings: Settings,
    sessions: Sessions,
    instance_id: str,
    cfg: InstanceConfig,
    plan: Plan,
    prompt: str,
    request: Mapping[str, Any],
) -> AnswerCacheUse | None:
    """The cache of this instance for this request, when the plan turns it on. The scope holds
    the instance's settings, the plan and `request` (route, model, system prompt,
    conversation): an answer is only reused for the same filters, models and prompts."""
    if plan.cache is None:
        return None
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
    cache = AnswerCache(sessions, instance_id, cfg.cache_ttl or DEFAULT_TTL)
    return AnswerCacheUse(cache, digest, prompt, plan.cache)


async def cached(index: VectorIndex, use: AnswerCacheUse) -> CachedAnswer | None:
    """A live entry whose chunks are all still in the index unchanged; a stale one is dropped."""
    hit = await use.cache.lookup(use.scope, use.prompt, use.level)
    if hit is None:
        return None
    if await chunks_unchanged(index, hit):
        return hit
    await use.cache.drop(hit.entry_id)
    return None


async def remembered(
    pieces: AsyncGenerator[str, None], use: AnswerCacheUse, model: str, used: list[ScoredChunk]
) -> AsyncGenerator[str, None]:
    """`pieces`, then the whole answer stored; an answer cut short (error, hang-up) is not."""
    text: list[str] = []
    async with contextlib.aclosing(pieces):  # a hang-up stops the model too
        async for piece in pieces:
            text.append(piece)
            yield piece
    await use.cache.store(use.scope, use.prompt, model, "".join(text), used)


async def once(text: str) -> AsyncGenerator[str, None]:
    yield text
