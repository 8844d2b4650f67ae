"""Deterministic stand-ins for model providers, for tests of retrieval and sync logic.

They are fakes of models, not of services: the index, database and source stay real.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Sequence

import numpy as np

from rag_service.providers.protocols import ChatMessage, Pooling, Usage, Vector

WORD = re.compile(r"\w+")


class HashingEmbedder:
    """Bag of hashed words, L2-normalised: texts sharing words are near each other."""

    model_id = "test/hashing"
    pooling: Pooling = "mean"
    max_tokens = 512

    def __init__(self, dimensions: int = 64) -> None:
        self.dimensions = dimensions
        self.embedded: list[str] = []  # every document text embedded, in order

    def count_tokens(self, text: str) -> int:
        return len(WORD.findall(text))

    def _vector(self, text: str) -> Vector:
        v = np.zeros(self.dimensions, dtype=np.float32)
        for word in WORD.findall(text.lower()):
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
            v[h % self.dimensions] += 1.0
        norm = float(np.linalg.norm(v))
        if norm == 0:
            v[0] = 1.0
            norm = 1.0
        return v / norm

    async def embed_documents(self, texts: Sequence[str]) -> Vector:
        self.embedded.extend(texts)
        return (
            np.stack([self._vector(t) for t in texts])
            if texts
            else np.zeros((0, self.dimensions), np.float32)
        )

    async def embed_query(self, text: str) -> Vector:
        return self._vector(text)


class EchoGenerator:
    """Streams the first words of its context back, one word per piece."""

    model_id = "test/echo"
    context_window = 4096

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(WORD.findall(m["content"])) + 4 for m in messages)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        words = WORD.findall(messages[0]["content"])[:max_tokens]
        if usage is not None:
            usage.prompt_tokens = self.count_tokens(messages)
            usage.completion_tokens = len(words)
        for word in words:
            yield word + " "
