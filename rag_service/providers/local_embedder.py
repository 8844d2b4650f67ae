"""In-process text embeddings with transformers: explicit CLS or mean pooling, L2-normalised."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer

from rag_service.config import BGE_QUERY_INSTRUCTION, LOCAL_EMBEDDING_MODEL
from rag_service.errors import BackendError
from rag_service.providers.local_models import (
    embedding_lanes,
    fast_bfloat16,
    length_batches,
    resolve_embedding_model,
    torch_threads,
)
from rag_service.providers.protocols import Pooling, Vector

_MAX_TOKENS_CAP = 512
Precision = Literal["auto", "float32", "bfloat16"]


def default_pooling(model: str) -> Pooling:
    """BGE models are trained for their CLS token; sentence-transformers ones for the mean."""
    return "cls" if "bge" in model.lower() else "mean"


def default_query_instruction(model: str) -> str:
    """BGE's retrieval instruction for its English models (`bge-*-en*`), none otherwise."""
    return BGE_QUERY_INSTRUCTION if re.search(r"bge.*-en\b", model.lower()) else ""


def _sentence_bert_max_seq_length(path: str) -> int | None:
    """`max_seq_length` of sentence_bert_config.json (a local folder or a cached hub id)."""
    try:
        from transformers.utils.hub import cached_file

        found = cached_file(
            path, "sentence_bert_config.json", _raise_exceptions_for_missing_entries=False
        )
        if found is None:
            return None
        with open(found, encoding="utf-8") as fh:
            value = json.load(fh).get("max_seq_length")
        return int(value) if value else None
    except Exception:  # no such file, no hub: fall back to the tokenizer's limit
        return None


class LocalEmbedder:
    """An `Embedder` running a Hugging Face encoder on CPU (loaded in the constructor)."""

    in_process = True  # it competes with the pipeline for this machine's cores

    def __init__(
        self,
        model: str = LOCAL_EMBEDDING_MODEL,
        pooling: Pooling | None = None,
        query_instruction: str | None = None,
        batch_size: int = 16,
        max_tokens: int | None = None,
        device: str = "cpu",
        threads: int | None = None,
        lanes: int | None = None,
        precision: Precision = "float32",
    ) -> None:
        """`precision` "auto": bfloat16 on a CPU that multiplies it natively (`fast_bfloat16`),
        else float32. bfloat16 vectors stay within ~1e-4 in cosine of float32 ones, so they
        share the model's identity in an index."""
        self.model_id = model
        self.pooling: Pooling = pooling or default_pooling(model)
        if self.pooling not in ("cls", "mean"):
            raise BackendError(f"unknown pooling {self.pooling!r}: use 'cls' or 'mean'")
        self.query_instruction = (
            default_query_instruction(model) if query_instruction is None else query_instruction
        )
        self.batch_size = max(1, batch_size)
        self.device = torch.device(device)
        self.threads = max(1, threads or torch_threads())  # torch's setting is per thread
        self.lanes = max(1, lanes or embedding_lanes())
        path = resolve_embedding_model(model)
        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(path)  # public: for the chunker
            self.model: Any = AutoModel.from_pretrained(path, dtype=torch.float32)
        except Exception as exc:
            raise BackendError(f"cannot load embedding model {model!r}: {exc}") from exc
        if precision == "auto":
            precision = "bfloat16" if self.device.type == "cpu" and fast_bfloat16() else "float32"
        self.precision = precision
        self.model.to(self.device, dtype=getattr(torch, precision)).eval()
        # HF fast tokenizers reconfigure their Rust backend on every call: the chunker and the
        # batches get their own copies, and counting a bare backend with no padding/truncation.
        self._batch_tokenizer: Any = copy.deepcopy(self.tokenizer)
        self._counter = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        self._counter.no_padding()
        self._counter.no_truncation()
        self.dimensions: int = int(self.model.config.hidden_size)
        if max_tokens is None:
            limit = int(min(self.tokenizer.model_max_length, _MAX_TOKENS_CAP))
            max_tokens = _sentence_bert_max_seq_length(path) or limit
        self.max_tokens: int = max_tokens
        self._lock = asyncio.Lock()  # queue callers without tying up worker threads
        self._torch_lock = threading.Lock()  # one forward pass at a time, even if cancelled

    def count_tokens(self, text: str) -> int:
        """Tokens of the model's tokenizer, without special tokens."""
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    async def embed_documents(self, texts: Sequence[str]) -> Vector:
        """One unit vector per text, float32, shape (n, dimensions)."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        async with self._lock:
            return await asyncio.to_thread(self._embed, list(texts))

    async def embed_query(self, text: str) -> Vector:
        """The query's unit vector, shape (dimensions,), with the query instruction prepended."""
        vectors = await self.embed_documents([self.query_instruction + text])
        query: Vector = vectors[0]
        return query

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes in a batch (special tokens included, at most `max_tokens`)."""
        encodings = self._counter.encode_batch(list(texts), add_special_tokens=True)
        return [min(len(e.ids), self.max_tokens) for e in encodings]

    def _embed(self, texts: list[str]) -> Vector:
        """Most tokens first so each batch pads little; rows are put back in input order.
        Several batches run in `lanes` threads of one torch thread each."""
        out: Vector = np.empty((len(texts), self.dimensions), dtype=np.float32)
        lengths = self.token_lengths(texts) if len(texts) > self.batch_size else [0] * len(texts)
        with self._torch_lock:  # also guards _batch_tokenizer, which each call reconfigures
            batches = [
                (rows, self._tokenize([texts[i] for i in rows]))
                for rows in length_batches(lengths, self.batch_size)
            ]
            if self.lanes > 1 and len(batches) > 1:
                with ThreadPoolExecutor(self.lanes, thread_name_prefix="embed") as lanes:
                    list(lanes.map(lambda b: self._forward(out, b[0], b[1], 1), batches))
            else:
                for rows, batch in batches:
                    self._forward(out, rows, batch, self.threads)
        return out

    def _tokenize(self, texts: list[str]) -> Any:
        return self._batch_tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)

    def _forward(self, out: Vector, rows: list[int], batch: Any, threads: int) -> None:
        """Encode one tokenised batch into `out[rows]` (torch's thread count and inference
        mode hold for the calling thread only)."""
        with torch.inference_mode():
            torch.set_num_threads(threads)
            try:
                hidden = self.model(**batch).last_hidden_state
            except RuntimeError as exc:
                raise BackendError(f"embedding with {self.model_id!r} failed: {exc}") from exc
            out[rows] = self._pool(hidden, batch["attention_mask"]).cpu().numpy()

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = hidden.float()  # bfloat16 sums would lose digits
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)
