"""Stage 6: embed chunks in batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rag_service.providers.protocols import Embedder, Vector


async def embed_chunks(embedder: Embedder, chunks: Sequence[str]) -> Vector:
    """One L2-normalised row per chunk; the embedder batches within its own limits."""
    if not chunks:
        return np.zeros((0, embedder.dimensions), dtype=np.float32)
    vectors = await embedder.embed_documents(chunks)
    if vectors.shape != (len(chunks), embedder.dimensions):
        raise ValueError(f"embedder returned shape {vectors.shape} for {len(chunks)} chunks")
    return vectors
