"""Response bodies in Cloudflare's shapes: AI Search chunks and AutoRAG's search page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rag_service.errors import RagError, public_message
from rag_service.namespaces import split_key
from rag_service.retrieve.search import ScoredChunk


def millis(seconds: float | None) -> int | None:
    """AI Search's timestamps are milliseconds (the index keeps seconds)."""
    return None if seconds is None else int(seconds * 1000)


def attributes(c: ScoredChunk) -> dict[str, Any]:
    """The chunk's metadata as AI Search shows it: its timestamp in milliseconds."""
    shown: dict[str, Any] = dict(c.attributes)
    if "timestamp" in shown:
        shown["timestamp"] = millis(c.timestamp)
    return shown


def aisearch_chunk(c: ScoredChunk, instance_id: str | None = None) -> dict[str, Any]:
    """One chunk; `instance_id` (the instance's name) tags it in searches across instances."""
    details: dict[str, Any] = {
        k: v
        for k, v in {
            "vector_score": c.vector_score,
            "vector_rank": c.vector_rank,
            "keyword_score": c.keyword_score,
            "keyword_rank": c.keyword_rank,
            "fusion_method": c.fusion_method,
            "reranking_score": c.reranking_score,
        }.items()
        if v is not None
    }
    tag = {} if instance_id is None else {"instance_id": instance_id}
    return {
        "id": c.id,
        **tag,
        "type": "text",
        "score": round(c.score, 6),
        "text": c.text,
        "item": {"key": c.key, "timestamp": millis(c.timestamp), "metadata": attributes(c)},
        "scoring_details": details,
    }


def aisearch_chunks(
    chunks: Sequence[ScoredChunk], origin: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The chunks; with `origin` (chunk id -> instance key), each tagged with its instance."""
    if origin is None:
        return [aisearch_chunk(c) for c in chunks]
    return [aisearch_chunk(c, split_key(origin[c.id])[1]) for c in chunks]


def instance_errors(failed: Mapping[str, RagError]) -> list[dict[str, str]]:
    """Instances that failed in a search across instances, and why."""
    return [
        {"instance_id": split_key(k)[1], "message": public_message(e)} for k, e in failed.items()
    ]


def aisearch_search_result(
    query: str, chunks: Sequence[ScoredChunk], origin: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "search_query": query,
        "query_kind": "text",
        "chunks": aisearch_chunks(chunks, origin),
    }


def legacy_item(c: ScoredChunk) -> dict[str, Any]:
    return {
        "file_id": c.item_id,
        "filename": c.key,
        "score": round(c.score, 6),
        "attributes": attributes(c),
        "content": [{"id": c.id, "type": "text", "text": c.text}],
    }


def legacy_page(
    query: str, chunks: Sequence[ScoredChunk], response: str | None = None
) -> dict[str, Any]:
    page: dict[str, Any] = {
        "object": "vector_store.search_results.page",
        "search_query": query,
    }
    if response is not None:
        page["response"] = response
    page.update(data=[legacy_item(c) for c in chunks], has_more=False, next_page=None)
    return page
