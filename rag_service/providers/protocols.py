"""The small interfaces every backend implements; the pipeline sees nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
Pooling = Literal["cls", "mean"]
MetadataValue = str | int | float | bool | None
# Vectorize-style filter: {"folder": {"$eq": "docs/"}, "timestamp": {"$gte": 1700000000}}
Filter = Mapping[str, Any]


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a source, as a listing reports it."""

    key: str
    etag: str
    size: int
    last_modified: float  # epoch seconds
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VectorRecord:
    """A chunk ready for the index: id `<item-id>:<n>`, its vector, its metadata (incl. `text`)."""

    id: str
    values: Vector
    metadata: Mapping[str, MetadataValue]


@dataclass(frozen=True)
class Match:
    """One hit of a vector or keyword query. Higher score is better."""

    id: str
    score: float
    metadata: Mapping[str, MetadataValue]


@dataclass(frozen=True)
class IndexSpec:
    """What an index was built for; a mismatching vector is refused."""

    model: str
    pooling: str
    dimensions: int


@runtime_checkable
class ObjectSource(Protocol):
    def list_objects(self) -> AsyncIterator[ObjectInfo]:
        """Every object under the source's prefix that its globs admit (an async generator)."""
        ...

    async def fetch(self, key: str, max_bytes: int) -> bytes:
        """The object's bytes; raises ObjectTooLarge past `max_bytes`, SourceError otherwise."""
        ...

    async def stat(self, key: str) -> ObjectInfo | None:
        """One object's info as a listing would give it; None when it is gone or not admitted."""
        ...


@runtime_checkable
class UploadStore(Protocol):
    """Where a managed instance's uploads live (a folder, or an area of a bucket); keys are
    the instance's item keys."""

    async def put(self, key: str, data: bytes, metadata: Mapping[str, str]) -> None:
        """Write (or replace) one file with its custom metadata (empty: none)."""
        ...

    async def remove(self, key: str) -> None:
        """Delete one file and its metadata; nothing when it is already gone."""
        ...

    async def clear(self) -> None:
        """Delete every file (the instance is being deleted)."""
        ...


@runtime_checkable
class Tokenizer(Protocol):
    def count_tokens(self, text: str) -> int: ...


@runtime_checkable
class Embedder(Protocol):
    model_id: str
    pooling: Pooling
    dimensions: int
    max_tokens: int

    def count_tokens(self, text: str) -> int:
        """Tokens of the model's own tokenizer, without special tokens."""
        ...

    async def embed_documents(self, texts: Sequence[str]) -> Vector:
        """L2-normalised vectors, one row per text."""
        ...

    async def embed_query(self, text: str) -> Vector:
        """One L2-normalised vector; the query instruction applied where the model has one."""
        ...


ChatMessage = Mapping[str, str]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@runtime_checkable
class Generator(Protocol):
    model_id: str
    context_window: int

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens the prompt takes once the model's chat template is applied."""
        ...

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        """Answer text pieces as the model produces them; fills `usage` when given."""
        ...


@runtime_checkable
class Reranker(Protocol):
    model_id: str

    async def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        """A relevance score in [0, 1] per text, same order."""
        ...


@runtime_checkable
class VectorIndex(Protocol):
    spec: IndexSpec

    async def upsert(self, records: Sequence[VectorRecord]) -> None: ...

    async def delete(self, ids: Sequence[str]) -> None: ...

    async def get(self, ids: Sequence[str]) -> list[Match]:
        """Stored chunks by id (score 1.0), missing ids left out."""
        ...

    async def query(self, vector: Vector, top_k: int, filter: Filter | None = None) -> list[Match]:
        """Exact cosine top-k, best first."""
        ...

    async def keyword_query(
        self,
        text: str,
        top_k: int,
        filter: Filter | None = None,
        match_mode: Literal["and", "or"] = "or",
    ) -> list[Match]:
        """BM25 top-k over chunk text, best first (score: higher is better)."""
        ...

    async def count(self) -> int: ...

    async def close(self) -> None: ...
