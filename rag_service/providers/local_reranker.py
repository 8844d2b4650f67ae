"""In-process cross-encoder reranking with transformers (any sequence-classification model by
HF id or path, e.g. BAAI/bge-reranker-base), on CPU.

Tested only on a tiny randomly initialised model built from a config (no reranker weights can
be fetched here): the tests check the code path, not ranking quality, and none is claimed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rag_service.errors import BackendError
from rag_service.providers.local_models import (
    DEFAULT_LOCAL_RERANKING_MODEL,
    length_batches,
    torch_threads,
)

_MAX_TOKENS_CAP = 512


class LocalReranker:
    """A `Reranker`: one relevance logit per (query, text) pair, squashed to [0, 1] with a
    sigmoid (a two-label model gives the softmax of its second label instead)."""

    in_process = True

    def __init__(
        self,
        model: str = DEFAULT_LOCAL_RERANKING_MODEL,
        batch_size: int = 16,
        max_tokens: int | None = None,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        self.model_id = model
        self.batch_size = max(1, batch_size)
        self.device = torch.device(device)
        self.threads = max(1, threads or torch_threads())
        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(model)
            self.model: Any = AutoModelForSequenceClassification.from_pretrained(
                model, dtype=torch.float32
            )
        except Exception as exc:
            raise BackendError(
                f"cannot load reranking model {model!r} (name a cross-encoder by HF id or "
                "path in reranking.model, the instance's reranking_model or "
                f"RAGD_RERANKING_MODEL): {exc}"
            ) from exc
        self.labels = int(self.model.config.num_labels)
        if self.labels not in (1, 2):
            raise BackendError(
                f"{model!r} has {self.labels} labels; a reranker has one relevance logit (or two)"
            )
        self.model.to(self.device).eval()
        limit = int(min(self.tokenizer.model_max_length, _MAX_TOKENS_CAP))
        self.max_tokens = min(max_tokens or limit, limit)
        self._lock = asyncio.Lock()  # queue callers without tying up worker threads
        self._torch_lock = threading.Lock()  # one forward pass at a time, even if cancelled

    async def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        """A score in [0, 1] per text, in input order."""
        if not texts:
            return []
        async with self._lock:
            return await asyncio.to_thread(self._score, query, list(texts))

    def _score(self, query: str, texts: list[str]) -> list[float]:
        """Longest texts first so each batch pads little; scores are put back in input order."""
        scores = [0.0] * len(texts)
        with self._torch_lock, torch.inference_mode():
            torch.set_num_threads(self.threads)
            for rows in length_batches([len(t) for t in texts], self.batch_size):
                batch = self.tokenizer(
                    [query] * len(rows),
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                ).to(self.device)
                try:
                    logits = self.model(**batch).logits.float()
                except RuntimeError as exc:
                    raise BackendError(f"reranking with {self.model_id!r} failed: {exc}") from exc
                if self.labels == 1:
                    probs = torch.sigmoid(logits[:, 0])
                else:
                    probs = torch.softmax(logits, dim=-1)[:, 1]
                for i, p in zip(rows, probs.tolist(), strict=True):
                    scores[i] = float(p)
        return scores
