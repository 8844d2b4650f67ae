"""`VectorizeIndex`: a `VectorIndex` whose vectors live in Vectorize and whose keyword (BM25)
side is a `LocalIndex` kept beside it in the instance's data dir (or, with
RAGD_KEYWORD_INDEX=postgres, a `PgKeywordIndex` in PostgreSQL), written on every upsert and
delete, so hybrid and keyword retrieval work on Cloudflare instances too.

Writes go out one request at a time, in order (Vectorize applies mutations in order; an upsert
and a later delete of one id must not swap), and writes waiting together are merged into one
NDJSON request. Vectorize is eventually consistent: `settle()` waits until it has applied every
mutation this index sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from rag_service.errors import IndexMismatch, InvalidRequest
from rag_service.providers.cloudflare.api import CloudflareAPI, CloudflareNotFound
from rag_service.providers.cloudflare.vectorize import (
    MAX_TOP_K,
    MAX_TOP_K_WITH_DATA,
    MetadataType,
    VectorizeClient,
)
from rag_service.providers.filters import validate_filter
from rag_service.providers.local_index import KeywordTokenizer, LocalIndex
from rag_service.providers.protocols import (
    Filter,
    IndexSpec,
    Match,
    MetadataValue,
    Vector,
    VectorRecord,
)

MAX_ID_BYTES = 64
MAX_METADATA_BYTES = 10 * 1024
# Filterable on Vectorize only with a metadata index, created before the vectors are written.
BUILTIN_METADATA_INDEXES: dict[str, MetadataType] = {
    "folder": "string",
    "timestamp": "number",
    "filename": "string",
}
_SPEC = re.compile(r"model=(?P<model>\S+) pooling=(?P<pooling>\S+) dimensions=(?P<dims>\d+)")


def describe_spec(spec: IndexSpec) -> str:
    """The index description recording what its vectors are."""
    return f"ragd: model={spec.model} pooling={spec.pooling} dimensions={spec.dimensions}"


def index_name(instance_id: str) -> str:
    """A Vectorize index name (lowercase letters, digits, dashes; <= 32 chars) per instance."""
    base = "ragd-" + re.sub(r"[^a-z0-9-]", "-", instance_id.lower())
    if len(base) <= 32 and base == f"ragd-{instance_id}":
        return base
    digest = hashlib.sha256(instance_id.encode()).hexdigest()[:8]
    return f"{base[:23].rstrip('-')}-{digest}"


def fit_metadata(rid: str, metadata: Mapping[str, MetadataValue]) -> dict[str, MetadataValue]:
    """Metadata within Vectorize's 10 KiB: null values dropped; an over-long chunk `text` is
    cut at a character boundary (the full text stays in the local keyword store)."""
    meta: dict[str, MetadataValue] = {k: v for k, v in metadata.items() if v is not None}

    def size(m: Mapping[str, Any]) -> int:  # \u-escaped: the larger way to count
        return len(json.dumps(m, separators=(",", ":")))

    text = meta.get("text")
    if size(meta) > MAX_METADATA_BYTES and isinstance(text, str):
        lo, hi = 0, len(text)  # the longest prefix that fits, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if size({**meta, "text": text[:mid]}) <= MAX_METADATA_BYTES:
                lo = mid
            else:
                hi = mid - 1
        meta["text"] = text[:lo]
    if size(meta) > MAX_METADATA_BYTES:
        raise InvalidRequest(f"chunk {rid!r}: metadata over Vectorize's 10 KiB even without text")
    return meta


class KeywordStore(Protocol):
    """The keyword side: a `LocalIndex` in the data dir or a `PgKeywordIndex` in PostgreSQL."""

    async def upsert(self, records: Sequence[VectorRecord]) -> None: ...

    async def delete(self, ids: Sequence[str]) -> None: ...

    async def keyword_query(
        self,
        text: str,
        top_k: int,
        filter: Filter | None = None,
        match_mode: Literal["and", "or"] = "or",
    ) -> list[Match]: ...

    async def close(self) -> None: ...


class VectorizeIndex:
    """Vectors on Vectorize, BM25 in a `KeywordStore`; implements `VectorIndex`."""

    def __init__(self, client: VectorizeClient, spec: IndexSpec, keyword: KeywordStore) -> None:
        self.client, self.spec, self.keyword = client, spec, keyword
        self._waiting: list[tuple[str, list[Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        api: CloudflareAPI,
        name: str,
        spec: IndexSpec,
        keyword_dir: Path,
        *,
        metadata_indexes: Mapping[str, MetadataType] | None = None,
        keyword_tokenizer: KeywordTokenizer = "porter",
        keyword: KeywordStore | None = None,
    ) -> VectorizeIndex:
        """Open or create index `name`; IndexMismatch if it holds other vectors than `spec`.
        The keyword side is `keyword` when given, else a LocalIndex in `keyword_dir`."""
        client = VectorizeClient(api, name)
        try:
            found = await client.get()
        except CloudflareNotFound:
            found = await client.create(spec.dimensions, "cosine", describe_spec(spec))
        _check_spec(name, found, spec)
        wanted = {**BUILTIN_METADATA_INDEXES, **(metadata_indexes or {})}
        have = {m.get("propertyName") for m in await client.list_metadata_indexes()}
        for prop, kind in wanted.items():
            if prop not in have:
                await client.create_metadata_index(prop, kind)
        if keyword is None:
            keyword = await LocalIndex.aopen(keyword_dir, spec, keyword_tokenizer)
        return cls(client, spec, keyword)

    async def upsert(self, records: Sequence[VectorRecord]) -> None:
        latest = {r.id: r for r in records}
        if not latest:
            return
        for rid in latest:
            if not rid or len(rid.encode()) > MAX_ID_BYTES:
                raise InvalidRequest(f"vector id {rid!r} must be 1-{MAX_ID_BYTES} bytes")
        vectors = [
            {"id": i, "values": self._unit(r.values, i), "metadata": fit_metadata(i, r.metadata)}
            for i, r in latest.items()
        ]
        await self._write("upsert", vectors)
        await self.keyword.upsert(list(latest.values()))

    async def delete(self, ids: Sequence[str]) -> None:
        unique = list(dict.fromkeys(ids))
        if unique:
            await self._write("delete", unique)
            await self.keyword.delete(unique)

    async def get(self, ids: Sequence[str]) -> list[Match]:
        found = {v["id"]: v for v in await self.client.get_by_ids(list(dict.fromkeys(ids)))}
        return [Match(i, 1.0, found[i].get("metadata") or {}) for i in ids if i in found]

    async def query(self, vector: Vector, top_k: int, filter: Filter | None = None) -> list[Match]:
        """Cosine top-k (at most 100, Vectorize's cap); past 20 the metadata is fetched by id."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidRequest(f"top_k must be a positive integer, got {top_k!r}")
        k = min(top_k, MAX_TOP_K)
        flt = validate_filter(filter) if filter else None
        if flt and "text" in flt:
            raise InvalidRequest("metadata 'text' is not filterable; use a keyword query instead")
        q = self._unit(vector, "query vector")
        with_data = k <= MAX_TOP_K_WITH_DATA
        hits = await self.client.query(
            q, k, return_metadata="all" if with_data else "none", filter=flt
        )
        if with_data:
            return [Match(h["id"], float(h["score"]), h.get("metadata") or {}) for h in hits]
        meta = {m.id: m.metadata for m in await self.get([h["id"] for h in hits])}
        return [Match(h["id"], float(h["score"]), meta[h["id"]]) for h in hits if h["id"] in meta]

    async def keyword_query(
        self,
        text: str,
        top_k: int,
        filter: Filter | None = None,
        match_mode: Literal["and", "or"] = "or",
    ) -> list[Match]:
        return await self.keyword.keyword_query(text, top_k, filter, match_mode)

    async def count(self) -> int:
        return int((await self.client.info()).get("vectorCount") or 0)

    async def settle(self, timeout: float = 60.0) -> bool:  # noqa: ASYNC109 (False on timeout)
        """Wait until Vectorize applied every mutation sent so far; False on timeout."""
        await self._drained()
        if not self.client.mutations:
            return True
        return await self.client.wait_for_mutation(self.client.mutations[-1], timeout)

    async def close(self) -> None:
        await self._drained()
        await self.keyword.close()

    def _unit(self, values: Any, name: str) -> list[float]:
        a = np.asarray(values, dtype=np.float64)
        if a.ndim != 1 or a.shape[0] != self.spec.dimensions:
            raise IndexMismatch(
                f"{name} has shape {a.shape}; index for {self.spec.model} expects "
                f"{self.spec.dimensions} dimensions"
            )
        norm = float(np.linalg.norm(a))
        if not math.isfinite(norm) or norm == 0:
            raise InvalidRequest(f"{name}: vector must be finite and non-zero")
        unit: list[float] = (a / norm).astype(np.float32).tolist()
        return unit

    async def _write(self, kind: str, payload: list[Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((kind, payload, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        """Send waiting writes in order, merging a run of the same kind into one call."""
        while self._waiting:
            kind = self._waiting[0][0]
            run: list[tuple[str, list[Any], asyncio.Future[None]]] = []
            while self._waiting and self._waiting[0][0] == kind:
                run.append(self._waiting.pop(0))
            merged = [x for _, payload, _ in run for x in payload]
            try:
                if kind == "upsert":
                    await self.client.upsert(merged)
                else:
                    await self.client.delete_by_ids(merged)
            except BaseException as exc:
                for _, _, future in run:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for _, _, future in run:
                if not future.done():
                    future.set_result(None)

    async def _drained(self) -> None:
        if self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)


def _check_spec(name: str, found: Mapping[str, Any], spec: IndexSpec) -> None:
    want = describe_spec(spec)
    config = found.get("config") or {}
    m = _SPEC.search(found.get("description") or "")
    have = (
        f"ragd: model={m['model']} pooling={m['pooling']} dimensions={m['dims']}"
        if m
        else f"an index not made by ragd ({config.get('dimensions')} dimensions)"
    )
    if have != want or config.get("dimensions") not in (None, spec.dimensions):
        raise IndexMismatch(f"Vectorize index {name!r} holds {have}; this instance needs {want}")
