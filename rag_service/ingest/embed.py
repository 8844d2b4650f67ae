"""Stage 6: embed the chunks of a window of items in one embedder call (fewer calls, less
padding: the embedder sorts a batch by length), each item getting its own rows back."""

from __future__ import annotations

from collections.abc import Sequence

from rag_service.errors import BackendError, RagError
from rag_service.ingest.retry import retry_transient
from rag_service.providers.protocols import Embedder, Vector


async def _embed(embedder: Embedder, texts: Sequence[str]) -> Vector:
    async def call() -> Vector:
        vectors = await embedder.embed_documents(texts)
        if vectors.shape != (len(texts), embedder.dimensions):
            raise BackendError(f"embedder returned shape {vectors.shape} for {len(texts)} texts")
        return vectors

    return await retry_transient(call, what="embedding")


async def embed_groups(
    embedder: Embedder, groups: Sequence[Sequence[str]]
) -> list[Vector | RagError]:
    """One vector array per group; when the joint call fails, each group is tried on its own so
    that a failure is confined to the item it belongs to."""
    texts = [t for group in groups for t in group]
    if not texts:
        return []
    try:
        vectors = await _embed(embedder, texts)
    except RagError as exc:
        if len(groups) == 1:
            return [exc]
        return [await _embed_alone(embedder, group) for group in groups]
    out: list[Vector | RagError] = []
    start = 0
    for group in groups:
        out.append(vectors[start : start + len(group)])
        start += len(group)
    return out


async def _embed_alone(embedder: Embedder, texts: Sequence[str]) -> Vector | RagError:
    try:
        return await _embed(embedder, texts)
    except RagError as exc:
        return exc
