"""An instance's items: list, read, chunks, logs, download, (re)index, delete, upload."""

from __future__ import annotations

import mimetypes
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import quote

from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from pydantic import Field, field_validator

from rag_service import records, uploads
from rag_service.api.errors import envelope
from rag_service.api.options import Lenient
from rag_service.api.paging import Page, Search, paged
from rag_service.api.requests import json_body, parse_json, read_json
from rag_service.api.views import iso, item_log_view, item_view
from rag_service.errors import InvalidRequest, NotFound
from rag_service.ingest.chunk_offsets import END_BYTE, START_BYTE
from rag_service.ingest.fetch import SizeLimits
from rag_service.ingest.index import CHUNK_FIELDS, chunk_id
from rag_service.instances import InstanceConfig, check_custom_metadata
from rag_service.job_runner import JobRunner
from rag_service.models import ItemStatus
from rag_service.namespaces import split_key
from rag_service.query.options import request_filter
from rag_service.records import item_id_for
from rag_service.runtime import Runtime
from rag_service.uploads import unprintable

UPLOAD_MAX_BYTES = 11 * 1024 * 1024  # the text cap (10 MiB) and the form around it
# Media types of the documents ragd reads that not every system's mime.types knows.
CONTENT_TYPES = {".md": "text/markdown", ".markdown": "text/markdown", ".mdx": "text/markdown"}

# AI Search's bounds on the items list and the item logs.
ItemsPerPage = Annotated[int, QueryParameter(ge=1, le=50, description="items per page (max 50)")]
SourceFilter = Annotated[
    str | None,
    QueryParameter(max_length=512, description="only items of this source_id ('builtin': uploads)"),
]
MetadataFilter = Annotated[
    str | None,
    QueryParameter(
        name="metadata_filter", max_length=2048, description="a JSON Vectorize-style filter"
    ),
]
LogLimit = Annotated[int, QueryParameter(ge=1, le=100, description="log lines per page")]
LogCursor = Annotated[
    str | None,
    QueryParameter(max_length=512, description="result_info.cursor of the previous page"),
]


class IndexRequest(Lenient):
    next_action: Literal["INDEX"]
    wait_for_completion: bool = False


class KeyIndexRequest(IndexRequest):
    key: str = Field(min_length=1, max_length=1024)

    @field_validator("key")
    @classmethod
    def _a_key_of_the_source(cls, key: str) -> str:
        """A key inside the source: relative, no `..` part, no control characters."""
        parts = key.replace("\\", "/").split("/")
        if key.startswith("/") or ".." in parts or any(unprintable(c) for c in key):
            raise ValueError(
                "use a relative key such as 'docs/guide.md' (no '..' or control characters)"
            )
        return key


def pending_view(instance_id: str, key: str, source_id: str) -> dict[str, Any]:
    """An item accepted for indexing whose row does not exist yet."""
    now = iso(datetime.now(UTC))
    return {
        "id": item_id_for(instance_id, key),
        "key": key,
        "namespace": split_key(instance_id)[0],
        "status": "queued",
        "checksum": "",
        "created_at": now,
        "last_seen_at": now,
        "source_id": source_id,
        "next_action": "INDEX",
    }


async def source_of(runtime: Runtime, instance_id: str) -> str:
    """The `source_id` of the instance's items (404 for an unknown instance)."""
    row, cfg = await runtime.instances.get(instance_id)
    return uploads.source_id(runtime.settings, row, cfg)


async def one_item(runtime: Runtime, instance_id: str, item_id: str) -> dict[str, Any]:
    """The item in AI Search's shape, in the envelope."""
    item = await records.get_item(runtime.sessions, instance_id, item_id)
    return envelope(item_view(item, await source_of(runtime, instance_id)))


async def index_key(
    runtime: Runtime, jobs: JobRunner, instance_id: str, key: str, wait: bool
) -> dict[str, Any]:
    """Index one object of the source now (`wait`) or in the background; either way after a
    running sync of the instance ends."""
    await jobs.index_item(instance_id, key, wait)
    if not wait:
        return envelope(pending_view(instance_id, key, await source_of(runtime, instance_id)))
    try:
        return await one_item(runtime, instance_id, item_id_for(instance_id, key))
    except NotFound:
        raise NotFound(f"{key!r} is not in the instance's source") from None


def content_type(key: str) -> str:
    """The item's media type, by its extension."""
    known = CONTENT_TYPES.get(PurePosixPath(key).suffix.lower())
    return known or mimetypes.guess_type(key)[0] or "application/octet-stream"


def attachment(name: str) -> str:
    """RFC 6266: an ASCII fallback name and the exact one, percent-encoded UTF-8."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def metadata_filter(raw: str | None) -> Any:
    if not raw:
        return None
    return request_filter(parse_json(raw, "metadata_filter"))


def upload_metadata(raw: object, cfg: InstanceConfig) -> dict[str, str]:
    """An upload's `metadata` form field: a JSON object of the instance's custom metadata
    fields (checked as rag_service.instances.check_custom_metadata says)."""
    if raw is None or raw == "":
        return {}
    given = parse_json(raw, "metadata") if isinstance(raw, str) else None
    if not isinstance(given, dict):
        raise InvalidRequest(
            "metadata must be a JSON object of custom metadata fields, such as "
            '{"category": "guides"}'
        )
    return check_custom_metadata(cfg.custom_metadata, given)


def log_cursor(cursor: str | None) -> int | None:
    """The last log line a previous page showed (its `result_info.cursor`)."""
    if cursor is None or cursor == "":
        return None
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
        raise InvalidRequest("cursor must be the result_info.cursor of a previous page of logs")
    return int(cursor)


class ItemsController(Controller):
    path = "/instances/{instance_id:str}/items"

    @get("/")
    async def list_items(
        self,
        runtime: NamedDependency[Runtime],
        instance_id: FromPath[str],
        page: Page = 1,
        per_page: ItemsPerPage = 20,
        item_id: FromQuery[str | None] = None,
        key: FromQuery[str | None] = None,
        status: FromQuery[ItemStatus | None] = None,
        search: Search = None,
        sort_by: FromQuery[Literal["status", "modified_at"]] = "status",
        source: SourceFilter = None,
        metadata_filter_json: MetadataFilter = None,
    ) -> dict[str, Any]:
        """`source`: every item of an instance has its source's id (one source each)."""
        source_id = await source_of(runtime, instance_id)
        if source is not None and source != source_id:
            return paged([], page, per_page, 0)
        total, rows = await records.list_items(
            runtime.sessions,
            instance_id,
            page,
            per_page,
            item_id=item_id,
            key=key,
            status=status,
            search=search,
            sort_by=sort_by,
            metadata_filter=metadata_filter(metadata_filter_json),
        )
        return paged([item_view(i, source_id) for i in rows], page, per_page, total)

    @put("/", operation_class=json_body(KeyIndexRequest))
    async def index_by_key(
        self,
        runtime: NamedDependency[Runtime],
        jobs: NamedDependency[JobRunner],
        request: Request[Any, Any, Any],
        instance_id: FromPath[str],
    ) -> dict[str, Any]:
        body = await read_json(request, KeyIndexRequest)
        await runtime.instances.get(instance_id)
        return await index_key(runtime, jobs, instance_id, body.key, body.wait_for_completion)

    @post("/", status_code=200, request_max_body_size=UPLOAD_MAX_BYTES)
    async def upload(
        self,
        runtime: NamedDependency[Runtime],
        jobs: NamedDependency[JobRunner],
        request: Request[Any, Any, Any],
        instance_id: FromPath[str],
    ) -> dict[str, Any]:
        row, cfg = await runtime.instances.get(instance_id)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidRequest("upload a file as multipart/form-data with a 'file' field")
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise InvalidRequest("the form needs a 'file' field holding a file with a name")
        if len(upload.filename) > 128:
            raise InvalidRequest("file names are limited to 128 characters")
        metadata = upload_metadata(form.get("metadata"), cfg)
        data = await upload.read()
        limits = SizeLimits(runtime.settings.max_file_bytes, runtime.settings.max_text_file_bytes)
        if len(data) > limits.cap_for(upload.filename):
            raise InvalidRequest(
                f"{upload.filename} is {len(data)} bytes, over the "
                f"{limits.cap_for(upload.filename)} byte limit for its type"
            )
        store = runtime.providers.upload_store(row, cfg)
        key = uploads.upload_key(cfg, upload.filename)
        await store.put(key, data, metadata)
        wait = str(form.get("wait_for_completion", "")).lower() in ("true", "1")
        return await index_key(runtime, jobs, instance_id, key, wait)

    @get("/{item_id:str}")
    async def get_item(
        self, runtime: NamedDependency[Runtime], instance_id: FromPath[str], item_id: FromPath[str]
    ) -> dict[str, Any]:
        return await one_item(runtime, instance_id, item_id)

    @patch("/{item_id:str}", operation_class=json_body(IndexRequest))
    async def sync_item(
        self,
        runtime: NamedDependency[Runtime],
        jobs: NamedDependency[JobRunner],
        request: Request[Any, Any, Any],
        instance_id: FromPath[str],
        item_id: FromPath[str],
    ) -> dict[str, Any]:
        body = await read_json(request, IndexRequest)
        item = await records.get_item(runtime.sessions, instance_id, item_id)
        return await index_key(runtime, jobs, instance_id, item.key, body.wait_for_completion)

    @delete("/{item_id:str}", status_code=200)
    async def delete_item(
        self,
        runtime: NamedDependency[Runtime],
        jobs: NamedDependency[JobRunner],
        instance_id: FromPath[str],
        item_id: FromPath[str],
    ) -> dict[str, Any]:
        item = await records.get_item(runtime.sessions, instance_id, item_id)
        await jobs.delete_item(instance_id, item.key)
        row, cfg = await runtime.instances.get(instance_id)
        if uploads.is_managed(runtime.settings, row):  # else the next sync would index it again
            await runtime.providers.upload_store(row, cfg).remove(uploads.safe_key(item.key))
        return envelope({"key": item.key})

    @get("/{item_id:str}/chunks")
    async def chunks(
        self,
        runtime: NamedDependency[Runtime],
        instance_id: FromPath[str],
        item_id: FromPath[str],
        limit: FromQuery[int] = 20,
        offset: FromQuery[int] = 0,
    ) -> dict[str, Any]:
        if not 1 <= limit <= 100 or offset < 0:
            raise InvalidRequest("limit must be 1-100 and offset 0 or more")
        item = await records.get_item(runtime.sessions, instance_id, item_id)
        _, cfg = await runtime.instances.get(instance_id)
        index = await runtime.providers.index(instance_id, cfg)
        end = min(offset + limit, item.chunks_count)
        found = await index.get([chunk_id(item.id, n) for n in range(offset, end)])
        result = [
            {
                "id": m.id,
                "text": str(m.metadata.get("text", "")),
                # null for types without a byte map and for chunks indexed before ranges were kept
                "start_byte": m.metadata.get(START_BYTE),
                "end_byte": m.metadata.get(END_BYTE),
                "item": {
                    "key": item.key,
                    "timestamp": m.metadata.get("timestamp"),
                    "metadata": {k: v for k, v in m.metadata.items() if k not in CHUNK_FIELDS},
                },
            }
            for m in found
        ]
        body = envelope(result, {"count": len(result), "total_count": item.chunks_count})
        return body

    @get("/{item_id:str}/logs")
    async def logs(
        self,
        runtime: NamedDependency[Runtime],
        instance_id: FromPath[str],
        item_id: FromPath[str],
        limit: LogLimit = 50,
        cursor: LogCursor = None,
    ) -> dict[str, Any]:
        """What syncs did with the item (extracted, chunked, indexed, error, skipped), oldest
        first; `result_info.cursor` (null on the last page) leads to the next page."""
        after = log_cursor(cursor)
        item = await records.get_item(runtime.sessions, instance_id, item_id)
        rows, more = await records.item_logs(runtime.sessions, item.id, after, limit)
        info = {
            "count": len(rows),
            "cursor": str(rows[-1].id) if more else None,
            "per_page": limit,
            "truncated": more,
        }
        return envelope([item_log_view(r, item.key) for r in rows], info)

    @get("/{item_id:str}/download")
    async def download(
        self, runtime: NamedDependency[Runtime], instance_id: FromPath[str], item_id: FromPath[str]
    ) -> Response[bytes]:
        item = await records.get_item(runtime.sessions, instance_id, item_id)
        if item.status != "completed":
            raise InvalidRequest(
                f"item {item_id!r} is {item.status}: only indexed items can be downloaded"
            )
        row, cfg = await runtime.instances.get(instance_id)
        limits = SizeLimits(runtime.settings.max_file_bytes, runtime.settings.max_text_file_bytes)
        data = await runtime.providers.source(row, cfg).fetch(item.key, limits.cap_for(item.key))
        return Response(
            data,
            media_type=content_type(item.key),
            headers={"Content-Disposition": attachment(item.key.rsplit("/", 1)[-1])},
        )
