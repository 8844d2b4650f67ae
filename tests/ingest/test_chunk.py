"""Chunks are measured in the embedding model's own tokens."""

from __future__ import annotations

from itertools import pairwise

import pytest

from rag_service.ingest.chunk import chunk_text
from rag_service.providers.local_embedder import LocalEmbedder


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


TEXT = "\n\n".join(
    f"Section {n}. The quick brown fox number {n} jumps over the lazy dog near the river bank, "
    f"while antidisestablishmentarianism{n} remains an unusually long word to tokenize."
    for n in range(40)
)


@pytest.mark.parametrize(("size", "overlap"), [(64, 0), (128, 12), (256, 25), (512, 51)])
def test_no_chunk_exceeds_size_in_model_tokens(
    embedder: LocalEmbedder, size: int, overlap: int
) -> None:
    chunks = chunk_text(TEXT, embedder, size, overlap)
    counts = [embedder.count_tokens(c) for c in chunks]
    assert max(counts) <= size
    assert len(chunks) >= embedder.count_tokens(TEXT) // size
    # Nothing is lost: every section's marker word appears in some chunk.
    joined = " ".join(chunks)
    assert all(f"antidisestablishmentarianism{n}" in joined for n in range(40))


def test_overlap_repeats_text_across_boundaries(embedder: LocalEmbedder) -> None:
    text = " ".join(f"word{n}" for n in range(600))  # one long paragraph: splits at spaces
    no_overlap = chunk_text(text, embedder, 64, 0)
    with_overlap = chunk_text(text, embedder, 64, 19)
    assert len(with_overlap) > len(no_overlap)
    for first, second in pairwise(with_overlap):
        tail = first.split()[-3:]
        assert second.split()[:3] != tail and set(tail) <= set(second.split())


def test_tokens_not_characters(embedder: LocalEmbedder) -> None:
    # Long rare words take several tokens each: a char-based splitter would overfill chunks.
    text = " ".join(["pneumonoultramicroscopicsilicovolcanoconiosis"] * 200)
    chunks = chunk_text(text, embedder, 64, 0)
    assert all(embedder.count_tokens(c) <= 64 for c in chunks)
    assert len(chunks) > 200 * 10 // 64


def test_overlap_must_be_smaller_than_size(embedder: LocalEmbedder) -> None:
    with pytest.raises(ValueError, match="smaller"):
        chunk_text("x", embedder, 64, 64)
