"""The Vectorize v2 half of the fake Cloudflare API: an in-memory store with Vectorize's limits
and its eventual consistency (a mutation is applied `mutation_delay` seconds after it was
accepted, in order; `info` reports `processedUpToMutation`)."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rag_service.errors import InvalidRequest
from rag_service.providers.filters import matches, validate_filter

MAX_DIMENSIONS = 1536
MAX_BATCH = 5000
MAX_BODY = 100_000_000
MAX_ID_BYTES = 64
MAX_METADATA_BYTES = 10 * 1024
MAX_METADATA_INDEXES = 10
ParsedVector = tuple[str, list[float], dict[str, Any], Any]  # id, values, metadata, namespace


class FakeError(Exception):
    """Answered as Cloudflare's error envelope."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class StoredVector:
    values: list[float]
    metadata: dict[str, Any]
    namespace: str | None
    indexed: frozenset[str]  # metadata indexes that existed when it was written


@dataclass
class FakeIndex:
    name: str
    dimensions: int
    metric: str
    description: str
    created_on: str = field(default_factory=_now_iso)
    vectors: dict[str, StoredVector] = field(default_factory=dict)
    metadata_indexes: dict[str, str] = field(default_factory=dict)
    pending: deque[tuple[str, float, Callable[[], None]]] = field(default_factory=deque)
    processed: str | None = None
    processed_at: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "config": {"dimensions": self.dimensions, "metric": self.metric},
            "created_on": self.created_on,
            "modified_on": self.created_on,
        }


class FakeVectorize:
    """Routes `vectorize/v2/indexes[/{name}[/{op}]]` onto an in-memory store."""

    def __init__(self, mutation_delay: float = 0.0) -> None:
        self.mutation_delay = mutation_delay
        self.indexes: dict[str, FakeIndex] = {}

    def handle(
        self, method: str, name: str | None, op: str | None, body: bytes, query: dict[str, str]
    ) -> Any:
        if name is None:
            if method == "POST":
                return self._create(_json(body))
            return [i.describe() for i in self.indexes.values()]
        index = self.indexes.get(name)
        if index is None:
            raise FakeError(404, 3000, f"vectorize.index.not_found: index {name!r} not found")
        self.catch_up(index)
        if op is None:
            if method == "DELETE":
                del self.indexes[name]
                return None
            return index.describe()
        handler = getattr(self, "_" + op.replace("/", "_"))
        return handler(index, body, query)

    def catch_up(self, index: FakeIndex) -> None:
        """Apply the mutations whose delay has passed, oldest first."""
        now = time.monotonic()
        while index.pending and index.pending[0][1] <= now:
            mutation_id, _, apply = index.pending.popleft()
            apply()
            index.processed, index.processed_at = mutation_id, _now_iso()

    def settle(self) -> None:
        """Apply everything pending now (for test assertions on the final state)."""
        for index in self.indexes.values():
            while index.pending:
                mutation_id, _, apply = index.pending.popleft()
                apply()
                index.processed = mutation_id

    def _enqueue(self, index: FakeIndex, apply: Callable[[], None]) -> dict[str, str]:
        mutation_id = str(uuid.uuid4())
        index.pending.append((mutation_id, time.monotonic() + self.mutation_delay, apply))
        if self.mutation_delay <= 0:
            self.catch_up(index)
        return {"mutationId": mutation_id}

    def _create(self, body: Any) -> dict[str, Any]:
        name, config = body.get("name"), body.get("config") or {}
        dims, metric = config.get("dimensions"), config.get("metric")
        if not isinstance(name, str) or not name or len(name) > 32 or name != name.lower():
            raise FakeError(400, 40001, f"invalid index name {name!r}")
        if not isinstance(dims, int) or not 1 <= dims <= MAX_DIMENSIONS:
            raise FakeError(400, 40002, f"dimensions must be 1..{MAX_DIMENSIONS}, got {dims!r}")
        if metric not in ("cosine", "euclidean", "dot-product"):
            raise FakeError(400, 40003, f"unknown metric {metric!r}")
        if name in self.indexes:
            raise FakeError(409, 3002, f"vectorize.index.duplicate_name: {name!r} exists")
        index = FakeIndex(name, dims, metric, body.get("description") or "")
        self.indexes[name] = index
        return index.describe()

    def _info(self, index: FakeIndex, body: bytes, query: dict[str, str]) -> dict[str, Any]:
        return {
            "dimensions": index.dimensions,
            "vectorCount": len(index.vectors),
            "processedUpToMutation": index.processed,
            "processedUpToDatetime": index.processed_at,
        }

    def _upsert(self, index: FakeIndex, body: bytes, query: dict[str, str]) -> dict[str, str]:
        if len(body) > MAX_BODY:
            raise FakeError(413, 40006, "upload larger than 100 MB")
        lines = [line for line in body.split(b"\n") if line.strip()]
        if not lines:
            raise FakeError(400, 40007, "no vectors in the NDJSON body")
        if len(lines) > MAX_BATCH:
            raise FakeError(400, 40008, f"{len(lines)} vectors in one request; at most {MAX_BATCH}")
        parsed = [self._vector(index, line) for line in lines]

        def apply() -> None:
            indexed = frozenset(index.metadata_indexes)
            for rid, values, meta, ns in parsed:
                index.vectors[rid] = StoredVector(values, meta, ns, indexed)

        return self._enqueue(index, apply)

    _insert = _upsert

    def _vector(
        self, index: FakeIndex, line: bytes
    ) -> tuple[str, list[float], dict[str, Any], Any]:
        try:
            v = json.loads(line)
        except ValueError:
            raise FakeError(400, 40009, "a line of the NDJSON body is not JSON") from None
        rid, values, meta = v.get("id"), v.get("values"), v.get("metadata") or {}
        if not isinstance(rid, str) or not rid or len(rid.encode()) > MAX_ID_BYTES:
            raise FakeError(400, 40010, f"vector id {rid!r} must be 1-{MAX_ID_BYTES} bytes")
        if not isinstance(values, list) or len(values) != index.dimensions:
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise FakeError(
                400,
                40012,
                f"vector dimension mismatch: index {index.name!r} expects "
                f"{index.dimensions} dimensions, got {got}",
            )
        if len(json.dumps(meta, ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
            raise FakeError(400, 40011, f"metadata of vector {rid!r} is larger than 10 KiB")
        if any(not k or "." in k or '"' in k or k.startswith("$") for k in meta):
            raise FakeError(400, 40013, f"vector {rid!r} has an invalid metadata key")
        return rid, [float(x) for x in values], meta, v.get("namespace")

    def _query(self, index: FakeIndex, body: bytes, query: dict[str, str]) -> dict[str, Any]:
        q = _json(body)
        vector, top_k = q.get("vector"), q.get("topK", 5)
        ret_meta, ret_values = q.get("returnMetadata", "none"), q.get("returnValues", False)
        if not isinstance(vector, list) or len(vector) != index.dimensions:
            got = len(vector) if isinstance(vector, list) else "none"
            raise FakeError(
                400, 40012, f"query vector has {got} dimensions; index expects {index.dimensions}"
            )
        if ret_meta not in ("none", "indexed", "all") or not isinstance(ret_values, bool):
            raise FakeError(400, 40014, "returnMetadata must be none|indexed|all")
        limit = 20 if ret_values or ret_meta != "none" else 100
        if not isinstance(top_k, int) or not 1 <= top_k <= limit:
            raise FakeError(
                400, 40015, f"topK must be 1..{limit} with these return options, got {top_k}"
            )
        try:
            flt, ns = validate_filter(q.get("filter") or {}), q.get("namespace")
        except InvalidRequest as exc:
            raise FakeError(400, 40021, f"invalid filter: {exc.message}") from None
        hits = []
        for rid, sv in index.vectors.items():
            if ns is not None and sv.namespace != ns:
                continue
            if flt and not (set(flt) <= sv.indexed and matches(sv.metadata, flt)):
                continue
            hits.append((_cosine(vector, sv.values), rid, sv))
        hits.sort(key=lambda h: (-h[0], h[1]))
        out = []
        for score, rid, sv in hits[:top_k]:
            m: dict[str, Any] = {"id": rid, "score": score, "namespace": sv.namespace}
            if ret_values:
                m["values"] = sv.values
            if ret_meta == "all":
                m["metadata"] = sv.metadata
            elif ret_meta == "indexed":
                m["metadata"] = {k: v for k, v in sv.metadata.items() if k in sv.indexed}
            out.append(m)
        return {"count": len(out), "matches": out}

    def _get_by_ids(self, index: FakeIndex, body: bytes, query: dict[str, str]) -> list[Any]:
        ids = _json(body).get("ids") or []
        return [
            {"id": i, "values": sv.values, "metadata": sv.metadata, "namespace": sv.namespace}
            for i in ids
            if (sv := index.vectors.get(i)) is not None
        ]

    def _delete_by_ids(self, index: FakeIndex, body: bytes, query: dict[str, str]) -> Any:
        ids = _json(body).get("ids")
        if not isinstance(ids, list):
            raise FakeError(400, 40016, "ids must be a list")

        def apply() -> None:
            for i in ids:
                index.vectors.pop(i, None)

        return self._enqueue(index, apply)

    def _list(self, index: FakeIndex, body: bytes, query: dict[str, str]) -> dict[str, Any]:
        count = int(query.get("count", 100))
        if not 1 <= count <= 1000:
            raise FakeError(400, 40017, "count must be 1..1000")
        ids = sorted(index.vectors)
        start = int(query.get("cursor") or 0)
        page = ids[start : start + count]
        more = start + count < len(ids)
        return {
            "count": len(page),
            "totalCount": len(ids),
            "isTruncated": more,
            "nextCursor": str(start + count) if more else None,
            "cursorExpirationTimestamp": _now_iso(),
            "vectors": [{"id": i} for i in page],
        }

    def _metadata_index_create(self, index: FakeIndex, body: bytes, query: dict[str, str]) -> Any:
        b = _json(body)
        prop, kind = b.get("propertyName"), b.get("indexType")
        if not isinstance(prop, str) or kind not in ("string", "number", "boolean"):
            raise FakeError(400, 40018, "propertyName and indexType string|number|boolean needed")
        if prop in index.metadata_indexes:
            raise FakeError(409, 40019, f"metadata index {prop!r} exists")
        if len(index.metadata_indexes) >= MAX_METADATA_INDEXES:
            raise FakeError(400, 40020, "at most 10 metadata indexes per index")
        index.metadata_indexes[prop] = kind  # listed at once; applies to later writes
        return self._enqueue(index, lambda: None)

    def _metadata_index_list(self, index: FakeIndex, body: bytes, query: dict[str, str]) -> Any:
        return {
            "metadataIndexes": [
                {"propertyName": p, "indexType": k} for p, k in index.metadata_indexes.items()
            ]
        }


def _json(body: bytes) -> Any:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise FakeError(400, 10002, "request body is not JSON") from None
    if not isinstance(value, dict):
        raise FakeError(400, 10002, "request body must be a JSON object")
    return value


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0
