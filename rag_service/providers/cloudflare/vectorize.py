"""Vectorize v2 over REST: one client per index, every route ragd uses, within the documented
limits (upsert: NDJSON, <= 5000 vectors and <= 100 MB a request; query: topK <= 20 with
metadata or values, <= 100 without; list: 1000 ids a page)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from rag_service.errors import BackendError
from rag_service.providers.cloudflare.api import CloudflareAPI

MAX_UPSERT_VECTORS = 5000
MAX_UPSERT_BYTES = 100_000_000
MAX_TOP_K_WITH_DATA = 20
MAX_TOP_K = 100
LIST_PAGE = 1000
GET_BY_IDS_BATCH = 20  # conservative: the Workers binding's getByIds takes 20 ids
DELETE_BATCH = 1000
ReturnMetadata = Literal["none", "indexed", "all"]
MetadataType = Literal["string", "number", "boolean"]


def ndjson_batches(vectors: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """NDJSON bodies holding at most MAX_UPSERT_VECTORS lines and MAX_UPSERT_BYTES each."""
    bodies: list[bytes] = []
    lines: list[bytes] = []
    size = 0
    for v in vectors:
        line = json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        if lines and (len(lines) == MAX_UPSERT_VECTORS or size + len(line) > MAX_UPSERT_BYTES):
            bodies.append(b"".join(lines))
            lines, size = [], 0
        lines.append(line)
        size += len(line)
    if lines:
        bodies.append(b"".join(lines))
    return bodies


class VectorizeClient:
    """The REST routes of one Vectorize v2 index; remembers the mutations it sent, in order."""

    def __init__(self, api: CloudflareAPI, index: str) -> None:
        self.api, self.index = api, index
        self.mutations: list[str] = []  # ids this client's writes returned, oldest first

    def _url(self, suffix: str = "") -> str:
        path = f"vectorize/v2/indexes/{self.index}" + (f"/{suffix}" if suffix else "")
        return self.api.account_url(path)

    async def _call(self, method: str, suffix: str, what: str, **kwargs: Any) -> Any:
        return await self.api.call(
            method,
            self._url(suffix),
            task="vectorize",
            what=f"Vectorize index {self.index!r} ({what})",
            **kwargs,
        )

    def _mutation(self, result: Any, what: str) -> str:
        mid = result.get("mutationId") if isinstance(result, dict) else None
        if not isinstance(mid, str):
            raise BackendError(f"Vectorize index {self.index!r} ({what}): no mutationId returned")
        self.mutations.append(mid)
        return mid

    async def create(
        self, dimensions: int, metric: str = "cosine", description: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.index,
            "config": {"dimensions": dimensions, "metric": metric},
        }
        if description is not None:
            body["description"] = description
        result: dict[str, Any] = await self.api.call(
            "POST",
            self.api.account_url("vectorize/v2/indexes"),
            task="vectorize",
            what=f"Vectorize index {self.index!r} (create)",
            json=body,
        )
        return result

    async def get(self) -> dict[str, Any]:
        """The index's name, config and description (CloudflareNotFound when missing)."""
        result: dict[str, Any] = await self._call("GET", "", "get")
        return result

    async def info(self) -> dict[str, Any]:
        """`{dimensions, vectorCount, processedUpToMutation, processedUpToDatetime}`."""
        result: dict[str, Any] = await self._call("GET", "info", "info")
        return result

    async def create_metadata_index(self, property_name: str, index_type: MetadataType) -> str:
        body = {"propertyName": property_name, "indexType": index_type}
        result = await self._call("POST", "metadata_index/create", "metadata index", json=body)
        return self._mutation(result, "metadata index")

    async def list_metadata_indexes(self) -> list[dict[str, Any]]:
        result = await self._call("GET", "metadata_index/list", "metadata indexes")
        found = result.get("metadataIndexes") if isinstance(result, dict) else None
        return list(found or [])

    async def upsert(self, vectors: Sequence[Mapping[str, Any]]) -> list[str]:
        """Upsert `{id, values, metadata?, namespace?}` objects; one mutation id per request."""
        ids = []
        for body in ndjson_batches(vectors):
            result = await self._call(
                "POST",
                "upsert",
                "upsert",
                content=body,
                headers={"Content-Type": "application/x-ndjson"},
            )
            ids.append(self._mutation(result, "upsert"))
        return ids

    async def query(
        self,
        vector: Sequence[float],
        top_k: int,
        *,
        return_metadata: ReturnMetadata = "none",
        return_values: bool = False,
        filter: Mapping[str, Any] | None = None,
        namespace: str | None = None,
    ) -> list[dict[str, Any]]:
        """Nearest matches `{id, score, metadata?, values?}`, best first."""
        bare = return_metadata == "none" and not return_values
        limit = MAX_TOP_K if bare else MAX_TOP_K_WITH_DATA
        if not 1 <= top_k <= limit:
            raise BackendError(f"Vectorize topK must be 1..{limit} for this query, got {top_k}")
        body: dict[str, Any] = {
            "vector": list(vector),
            "topK": top_k,
            "returnMetadata": return_metadata,
            "returnValues": return_values,
        }
        if filter:
            body["filter"] = dict(filter)
        if namespace is not None:
            body["namespace"] = namespace
        result = await self._call("POST", "query", "query", json=body)
        matches = result.get("matches") if isinstance(result, dict) else None
        return list(matches or [])

    async def get_by_ids(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Stored vectors `{id, values, metadata, namespace}`; unknown ids are left out."""
        batches = [ids[i : i + GET_BY_IDS_BATCH] for i in range(0, len(ids), GET_BY_IDS_BATCH)]
        calls = (self._call("POST", "get_by_ids", "get", json={"ids": list(b)}) for b in batches)
        results = await asyncio.gather(*calls)
        return [v for found in results for v in (found or [])]

    async def delete_by_ids(self, ids: Sequence[str]) -> list[str]:
        out = []
        for i in range(0, len(ids), DELETE_BATCH):
            body = {"ids": list(ids[i : i + DELETE_BATCH])}
            result = await self._call("POST", "delete_by_ids", "delete", json=body)
            out.append(self._mutation(result, "delete"))
        return out

    async def list_vectors(self, count: int = LIST_PAGE, cursor: str | None = None) -> Any:
        """One page: `{count, totalCount, isTruncated, nextCursor, vectors: [{id}]}`."""
        params: dict[str, str | int] = {"count": count}
        if cursor:
            params["cursor"] = cursor
        return await self._call("GET", "list", "list", params=params)

    async def list_ids(self) -> list[str]:
        """Every vector id, following the cursor."""
        ids: list[str] = []
        cursor: str | None = None
        while True:
            page = await self.list_vectors(cursor=cursor)
            ids.extend(v["id"] for v in page.get("vectors") or [])
            cursor = page.get("nextCursor")
            if not page.get("isTruncated") or not cursor:
                return ids

    async def wait_for_mutation(
        self,
        mutation_id: str,
        timeout: float = 60.0,  # noqa: ASYNC109 (a timeout answers False, not an error)
        poll: float = 0.5,
    ) -> bool:
        """Poll `info` until `processedUpToMutation` reaches `mutation_id` (or a later one
        this client sent); False when `timeout` passes first."""
        later = (
            set(self.mutations[self.mutations.index(mutation_id) :])
            if (mutation_id in self.mutations)
            else {mutation_id}
        )
        deadline = time.monotonic() + timeout
        while True:
            if (await self.info()).get("processedUpToMutation") in later:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic())))
