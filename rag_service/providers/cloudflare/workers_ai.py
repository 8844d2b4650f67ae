"""Workers AI over REST: BGE embeddings (always CLS pooling), streamed chat generation and the
bge-reranker-base cross-encoder, each one `ai/run/{model}` call shape."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

from rag_service.config import BGE_QUERY_INSTRUCTION
from rag_service.errors import BackendError, InvalidRequest, UpstreamError
from rag_service.providers.cloudflare.api import CloudflareAPI
from rag_service.providers.cloudflare.limits import Task
from rag_service.providers.protocols import ChatMessage, Pooling, Usage, Vector
from rag_service.providers.usage import record_call

WORKERS_AI_EMBEDDING_MODEL = "@cf/baai/bge-base-en-v1.5"
WORKERS_AI_GENERATION_MODEL = "@cf/meta/llama-3.1-8b-instruct"
WORKERS_AI_RERANKING_MODEL = "@cf/baai/bge-reranker-base"
EMBEDDING_DIMENSIONS = {
    "@cf/baai/bge-small-en-v1.5": 384,
    "@cf/baai/bge-base-en-v1.5": 768,
    "@cf/baai/bge-large-en-v1.5": 1024,
    "@cf/baai/bge-m3": 1024,
}
MAX_TEXTS_PER_CALL = 100  # Workers AI's BGE batch limit
# Context windows in tokens, as Cloudflare's model pages list them; unknown models get 4096.
CONTEXT_WINDOWS = {
    "@cf/meta/llama-3.1-8b-instruct": 7968,
    "@cf/meta/llama-3.1-8b-instruct-fp8-fast": 7968,
    "@cf/meta/llama-3.3-70b-instruct-fp8-fast": 24000,
    "@cf/meta/llama-4-scout-17b-16e-instruct": 131000,
    "@cf/openai/gpt-oss-120b": 128000,
    "@cf/openai/gpt-oss-20b": 128000,
}
DEFAULT_CONTEXT_WINDOW = 4096


# The uncased BERT WordPiece vocabulary (30522 entries) that BGE en v1.5 and all-MiniLM-L6-v2
# share; copied from sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0).
BERT_UNCASED_VOCAB = Path(__file__).with_name("bert_uncased_vocab.txt")
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_wordpiece: HFTokenizer | None = None
_wordpiece_lock = threading.Lock()


def bert_wordpiece() -> HFTokenizer:
    """The BERT-uncased tokenizer, built from the shipped vocab on first use, once per process.

    The same pipeline as bert-base-uncased's (and the MiniLM's) tokenizer.json: BERT
    normalizer (clean text, space out CJK, lowercase, strip accents), BERT pre-tokenizer,
    WordPiece with `##` continuations and [UNK] past 100 characters; special tokens written
    in the text stay one token each. No padding, no truncation.
    """
    global _wordpiece
    if _wordpiece is None:
        with _wordpiece_lock:
            if _wordpiece is None:
                tok = HFTokenizer(
                    WordPiece.from_file(
                        str(BERT_UNCASED_VOCAB),
                        unk_token="[UNK]",
                        continuing_subword_prefix="##",
                        max_input_chars_per_word=100,
                    )
                )
                tok.normalizer = BertNormalizer(
                    clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
                )
                tok.pre_tokenizer = BertPreTokenizer()
                tok.add_special_tokens(
                    [AddedToken(t, special=True, normalized=False) for t in BERT_SPECIAL_TOKENS]
                )
                _wordpiece = tok
    return _wordpiece


class WordPieceCounter:
    """BERT-uncased WordPiece counts (BGE en v1.5's tokenizer), special tokens not added."""

    def count_tokens(self, text: str) -> int:
        return len(bert_wordpiece().encode(text, add_special_tokens=False).ids)


class WorkersAIEmbedder:
    """An `Embedder` on Workers AI's BGE models; every call sends `pooling: "cls"`."""

    pooling: Pooling = "cls"

    def __init__(
        self,
        api: CloudflareAPI,
        model: str = WORKERS_AI_EMBEDDING_MODEL,
        *,
        dimensions: int | None = None,
        query_instruction: str | None = None,
        batch_size: int = MAX_TEXTS_PER_CALL,
        concurrency: int = 8,
        max_tokens: int = 512,
    ) -> None:
        dims = dimensions or EMBEDDING_DIMENSIONS.get(model)
        if dims is None:
            raise BackendError(
                f"unknown dimensions for embedding model {model!r}: known are "
                f"{', '.join(EMBEDDING_DIMENSIONS)}"
            )
        self.api, self.model_id, self.dimensions, self.max_tokens = api, model, dims, max_tokens
        english_v15 = "-en-v1.5" in model
        self.query_instruction = (
            (BGE_QUERY_INSTRUCTION if english_v15 else "")
            if query_instruction is None
            else query_instruction
        )
        self.batch_size = max(1, min(batch_size, MAX_TEXTS_PER_CALL))
        self._task: Task = "embeddings_large" if "bge-large" in model else "embeddings"
        self._calls = asyncio.Semaphore(concurrency)
        self._counter = WordPieceCounter()

    def count_tokens(self, text: str) -> int:
        return self._counter.count_tokens(text)

    async def embed_documents(self, texts: Sequence[str]) -> Vector:
        """Unit vectors, one row per text, in calls of at most `batch_size` texts."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        batches = [
            list(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)
        ]
        parts = await asyncio.gather(*(self._embed(batch) for batch in batches))
        return np.concatenate(parts)

    async def embed_query(self, text: str) -> Vector:
        vectors = await self.embed_documents([self.query_instruction + text])
        query: Vector = vectors[0]
        return query

    async def _embed(self, texts: list[str]) -> Vector:
        async with self._calls:
            result = await self.api.call(
                "POST",
                self.api.ai_url(self.model_id),
                task=self._task,
                what=f"Workers AI embeddings with {self.model_id}",
                json={"text": texts, "pooling": "cls"},
                headers=self.api.ai_headers(),
            )
        data = result.get("data") if isinstance(result, dict) else None
        try:
            out = np.asarray(data, dtype=np.float32)
        except (TypeError, ValueError):
            out = np.zeros(0, np.float32)
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise BackendError(
                f"Workers AI {self.model_id} returned {out.shape} for {len(texts)} texts"
            )
        if out.shape[1] != self.dimensions:
            raise BackendError(
                f"Workers AI {self.model_id} returned {out.shape[1]}-dimensional vectors; "
                f"expected {self.dimensions}"
            )
        record_call(self.model_id, sum(self.count_tokens(t) + 2 for t in texts))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        unit: Vector = (out / np.where(norms == 0, 1.0, norms)).astype(np.float32)
        return unit


def estimate_chat_tokens(messages: Sequence[ChatMessage]) -> int:
    """Over-estimate (no Llama tokenizer here): a token per 3 characters, 8 per message."""
    return sum(math.ceil(len(m.get("content", "")) / 3) + 8 for m in messages) + 8


class WorkersAIGenerator:
    """A `Generator` streaming Workers AI chat models over SSE."""

    def __init__(
        self,
        api: CloudflareAPI,
        model: str = WORKERS_AI_GENERATION_MODEL,
        *,
        context_window: int | None = None,
    ) -> None:
        self.api, self.model_id = api, model
        self.context_window = context_window or CONTEXT_WINDOWS.get(model, DEFAULT_CONTEXT_WINDOW)

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return estimate_chat_tokens(messages)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        """Pieces of `data: {"response": ...}` events as they arrive; usage from the last one."""
        if max_tokens < 1:
            raise InvalidRequest("max_tokens must be positive")
        body = {
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,  # Workers AI silently defaults to 256
            "temperature": temperature,
            "stream": True,
        }
        what = f"Workers AI generation with {self.model_id}"
        got: dict[str, Any] = {}
        text: list[str] = []
        headers = {"Accept": "text/event-stream", **self.api.ai_headers()}
        async with self.api.stream(
            self.api.ai_url(self.model_id),
            task="text_generation",
            what=what,
            json=body,
            headers=headers,
        ) as resp:
            async for event in sse_events(resp, what, self.api.redact):
                if isinstance(event.get("usage"), dict):
                    got = event["usage"]
                piece = event.get("response")
                if isinstance(piece, str) and piece:
                    text.append(piece)
                    yield piece
        prompt_tokens = int(got.get("prompt_tokens") or estimate_chat_tokens(messages))
        completion_tokens = int(got.get("completion_tokens") or math.ceil(len("".join(text)) / 3))
        record_call(self.model_id, prompt_tokens, completion_tokens)
        if usage is not None:
            usage.prompt_tokens, usage.completion_tokens = prompt_tokens, completion_tokens


async def sse_events(
    resp: httpx.Response, what: str, redact: Callable[[str], str]
) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an SSE stream's `data:` lines, up to `data: [DONE]`."""
    try:
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments, event:/id: fields
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError:
                raise UpstreamError(
                    f"{what}: malformed event {data[:200]!r}", summary=f"{what}: malformed event"
                ) from None
            if isinstance(event, dict):
                if event.get("errors") or event.get("error"):
                    detail = event.get("errors") or event.get("error")
                    raise UpstreamError(
                        f"{what}: {redact(str(detail))}",
                        summary=f"{what}: Workers AI reported an error while answering",
                    )
                yield event
    except httpx.HTTPError as exc:
        detail = redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
        raise UpstreamError(
            f"{what}: stream broke off: {detail}", summary=f"{what}: the stream broke off"
        ) from None


class WorkersAIReranker:
    """A `Reranker` on `@cf/baai/bge-reranker-base`: one call scores every text."""

    def __init__(self, api: CloudflareAPI, model: str = WORKERS_AI_RERANKING_MODEL) -> None:
        self.api, self.model_id = api, model
        self._counter: WordPieceCounter | None = None

    async def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        """Scores in [0, 1], input order (a raw logit, should one come back, is squashed)."""
        if not texts:
            return []
        result = await self.api.call(
            "POST",
            self.api.ai_url(self.model_id),
            task="other",
            what=f"Workers AI reranking with {self.model_id}",
            json={
                "query": query,
                "contexts": [{"text": t} for t in texts],
                "top_k": len(texts),
            },
            headers=self.api.ai_headers(),
        )
        ranked = result.get("response") if isinstance(result, dict) else None
        if not isinstance(ranked, list):
            raise BackendError(f"Workers AI {self.model_id} returned no `response` list")
        scores = [0.0] * len(texts)
        for hit in ranked:
            i, score = hit.get("id"), hit.get("score")
            if isinstance(i, int) and 0 <= i < len(texts) and isinstance(score, int | float):
                s = float(score)
                scores[i] = s if 0.0 <= s <= 1.0 else 1.0 / (1.0 + math.exp(-s))
        self._counter = self._counter or WordPieceCounter()
        q = self._counter.count_tokens(query)
        record_call(self.model_id, sum(q + self._counter.count_tokens(t) + 3 for t in texts))
        return scores
