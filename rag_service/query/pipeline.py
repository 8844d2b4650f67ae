"""One query path for every entry point: plan -> search query (rewrite, exclusions) -> retrieve
(vector and keyword, fused, boosted, thresholded) -> rerank -> expand; and for answers, the
similarity cache around retrieve -> prompt -> generate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from rag_service import records
from rag_service.config import Settings
from rag_service.errors import RagError
from rag_service.instance_registry import InstanceRegistry
from rag_service.instances import InstanceConfig
from rag_service.providers.protocols import ChatMessage, Usage
from rag_service.query.answers import AnswerCacheUse, cache_use, cached, once, remembered
from rag_service.query.options import Plan, QueryOptions, plan_query
from rag_service.registry import Providers
from rag_service.retrieve.exclusions import split_exclusions
from rag_service.retrieve.expand import expand_context
from rag_service.retrieve.extractive import CHUNKS_READ, EXTRACTIVE_MODEL, extractive_answer
from rag_service.retrieve.generate import build_prompt, generate_answer
from rag_service.retrieve.rerank import rerank
from rag_service.retrieve.rewrite import rewrite_query
from rag_service.retrieve.search import ScoredChunk, search

REWRITE_FIRST_MESSAGE = (
    "query_rewrite rewrites follow-up messages, as in AI Search: a 'query' or a first "
    "message is searched as given"
)
CACHE_ON_SEARCH = "the similarity cache keeps generated answers; search results are not cached"
CACHE_ACROSS = "the similarity cache is per instance: answers across instances are not cached"
NO_OPTIONS = QueryOptions()


@dataclass
class SearchResult:
    search_query: str  # what was searched: the question rewritten and split as planned
    chunks: list[ScoredChunk]  # best first
    notes: list[str] = field(default_factory=list)  # for the response's `messages`
    origin: dict[str, str] = field(default_factory=dict)  # across instances: chunk id -> instance
    failed: dict[str, RagError] = field(default_factory=dict)  # across instances: who failed, why


@dataclass
class Answer:
    model: str
    search_query: str
    used: list[ScoredChunk]  # the sources, in rank order
    pieces: AsyncGenerator[str, None]  # the answer as it is written (a cached one, whole)
    usage: Usage = field(default_factory=Usage)
    cache_status: str | None = None  # HIT or MISS when the cache was asked
    notes: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # as in SearchResult
    failed: dict[str, RagError] = field(default_factory=dict)


class QueryPipeline:
    def __init__(
        self, settings: Settings, instances: InstanceRegistry, providers: Providers
    ) -> None:
        self.settings = settings
        self.instances = instances
        self.providers = providers

    async def search(
        self,
        instance_id: str,
        question: str,
        options: QueryOptions = NO_OPTIONS,
        earlier: Sequence[ChatMessage] | None = None,
    ) -> SearchResult:
        """Retrieval only. `earlier`: the conversation before `question` (None: a first message
        or a bare query; query rewrite reads follow-ups only)."""
        cfg = await self.instances.config(instance_id)
        plan = plan_query(cfg, options)
        result = await self._retrieve(instance_id, cfg, plan, question, earlier)
        if plan.context_expansion:
            index = await self.providers.index(instance_id, cfg)
            result.chunks = await expand_context(index, result.chunks, plan.context_expansion)
        if plan.cache is not None:
            result.notes.append(CACHE_ON_SEARCH)
        await self._note_if_empty(instance_id, result.chunks, result.notes)
        return result

    async def answer(
        self,
        instance_id: str,
        question: str,
        options: QueryOptions = NO_OPTIONS,
        *,
        earlier: Sequence[ChatMessage] | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
        route: str = "chat",
    ) -> Answer:
        """A grounded answer: from the similarity cache when the plan turns it on and a
        near-identical prompt was answered from unchanged chunks, else retrieve -> prompt ->
        generate, remembered once the whole answer is out."""
        cfg = await self.instances.config(instance_id)
        self.providers.check_model(model or cfg.ai_search_model)  # before any work
        plan = plan_query(cfg, options)
        scope = {"route": route, "earlier": earlier, "model": model, "system_prompt": system_prompt}
        use = cache_use(
            self.settings, self.instances.sessions, instance_id, cfg, plan, question, scope
        )
        hit = await cached(await self.providers.index(instance_id, cfg), use) if use else None
        if hit is not None:
            return Answer(hit.model, question, hit.chunks, once(hit.answer), cache_status="HIT")
        found = await self._retrieve(instance_id, cfg, plan, question, earlier, model)
        reply = await self._write(cfg, question, found, model, system_prompt)
        if use is not None:
            reply.cache_status = "MISS"
            if reply.used:
                reply.pieces = remembered(reply.pieces, use, reply.model, reply.used)
        await self._note_if_empty(instance_id, reply.used, reply.notes)
        return reply

    async def search_across(
        self,
        instance_ids: Sequence[str],
        question: str,
        options: QueryOptions = NO_OPTIONS,
        earlier: Sequence[ChatMessage] | None = None,
    ) -> SearchResult:
        """One search over several instances: each searched as `search` does, the chunks merged
        by score and cut to the first instance's `max_num_results` (or the request's); an
        instance that fails is reported in `failed` unless all do (then its error is raised)."""
        asked = list(dict.fromkeys(instance_ids))
        results = await asyncio.gather(
            *(self.search(i, question, options, earlier) for i in asked), return_exceptions=True
        )
        answered: list[tuple[str, SearchResult]] = []
        failed: dict[str, RagError] = {}
        for instance_id, result in zip(asked, results, strict=True):
            if isinstance(result, RagError):
                failed[instance_id] = result
            elif isinstance(result, BaseException):
                raise result
            else:
                answered.append((instance_id, result))
        if not answered:
            raise failed[asked[0]]
        lead, first = answered[0]
        merged = SearchResult(first.search_query, [], failed=failed)
        for instance_id, result in answered:
            merged.chunks.extend(result.chunks)
            merged.origin.update((c.id, instance_id) for c in result.chunks)
            merged.notes.extend(n for n in result.notes if n not in merged.notes)
        plan = plan_query(await self.instances.config(lead), options)
        merged.chunks.sort(key=lambda c: c.score, reverse=True)
        del merged.chunks[plan.retrieval.max_num_results :]
        return merged

    async def answer_across(
        self,
        instance_ids: Sequence[str],
        question: str,
        options: QueryOptions = NO_OPTIONS,
        *,
        earlier: Sequence[ChatMessage] | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
    ) -> Answer:
        """A grounded answer over several instances' merged chunks, written with the first
        answering instance's models and prompt; the similarity cache is per instance and is
        not used here."""
        found = await self.search_across(instance_ids, question, options, earlier)
        lead = next(i for i in dict.fromkeys(instance_ids) if i not in found.failed)
        cfg = await self.instances.config(lead)
        self.providers.check_model(model or cfg.ai_search_model)
        if plan_query(cfg, options).cache is not None:
            found.notes.append(CACHE_ACROSS)
        return await self._write(cfg, question, found, model, system_prompt)

    async def _write(
        self,
        cfg: InstanceConfig,
        question: str,
        found: SearchResult,
        model: str | None,
        system_prompt: str | None,
    ) -> Answer:
        """Prompt -> generate over `found` (nothing is generated until the answer is read)."""
        usage = Usage()
        if self.providers.extracts(cfg, model):
            model_id, used = EXTRACTIVE_MODEL, found.chunks[:CHUNKS_READ]
            embedder = await self.providers.embedder(cfg)
            pieces = extractive_answer(embedder, question, used)
        else:
            generator = await self.providers.generator(cfg, model)
            max_tokens = self.settings.generation_max_tokens
            system = system_prompt or cfg.system_prompt
            prompt = build_prompt(generator, question, found.chunks, max_tokens, system)
            model_id, used = generator.model_id, prompt.used
            pieces = generate_answer(generator, prompt, max_tokens, usage)
        return Answer(
            model_id,
            found.search_query,
            used,
            pieces,
            usage,
            notes=found.notes,
            origin=found.origin,
            failed=found.failed,
        )

    async def _retrieve(
        self,
        instance_id: str,
        cfg: InstanceConfig,
        plan: Plan,
        question: str,
        earlier: Sequence[ChatMessage] | None,
        answer_model: str | None = None,
    ) -> SearchResult:
        """Search query -> retrieve -> rerank (a reranker that cannot be had is an error even
        when nothing was found)."""
        notes: list[str] = []
        query = await self._search_query(cfg, plan, question, earlier, answer_model, notes)
        reranker = (
            await self.providers.reranker(cfg, plan.reranking.model) if plan.reranking else None
        )
        embedder = await self.providers.embedder(cfg)
        index = await self.providers.index(instance_id, cfg)
        chunks = await search(embedder, index, query, plan.retrieval)
        if reranker is not None and plan.reranking is not None:
            chunks = await rerank(reranker, query, chunks, plan.reranking.match_threshold)
        return SearchResult(query, chunks, notes)

    async def _search_query(
        self,
        cfg: InstanceConfig,
        plan: Plan,
        question: str,
        earlier: Sequence[ChatMessage] | None,
        answer_model: str | None,
        notes: list[str],
    ) -> str:
        """The question rewritten by the rewrite model (the instance's, else the answer model)
        when the plan asks for it and `earlier` is not None; then without its exclusions when
        the plan splits them off."""
        query = question
        if plan.rewrite is not None and earlier is None:
            notes.append(REWRITE_FIRST_MESSAGE)
        elif plan.rewrite is not None and earlier is not None:
            generator = await self.providers.generator(cfg, plan.rewrite.model or answer_model)
            query = await rewrite_query(generator, question, earlier, plan.rewrite.prompt)
        return split_exclusions(query).positive if plan.split_exclusions else query

    async def _note_if_empty(
        self, instance_id: str, found: Sequence[ScoredChunk], notes: list[str]
    ) -> None:
        """When nothing was found, say so if indexing is why (not synced yet, or syncing)."""
        if not found and (
            note := await records.indexing_note(self.instances.sessions, instance_id)
        ):
            notes.append(note)


__all__ = ["Answer", "AnswerCacheUse", "QueryPipeline", "SearchResult"]
