"""An instance's items: list, read, chunks, download, (re)index, delete, upload."""

from __future__ import annotations

import mimetypes
from datetime import UTC, datetime
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
from rag_service.api.paging import Page, PerPage, Search, check_page, paged
from rag_service.api.requests import json_body, parse_json, read_json
from rag_service.api.views import NAMESPACE, iso, item_view
from rag_service.errors import InvalidRequest, NotFound
from rag_service.ingest.fetch import SizeLimits
from rag_service.ingest.index import chunk_id
from rag_service.job_runner import JobRunner
from rag_service.models import ItemStatus
from rag_service.query.options import request_filter
from rag_service.records import item_id_for
from rag_service.runtime import Runtime
from rag_service.uploads import unprintable

UPLOAD_MAX_BYTES = 11 * 1024 * 1024  # the text cap (10 MiB) and the form around it


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


def pending_view(instance_id: str, key: str) -> dict[str, Any]:
    """An item accepted for indexing whose row does not exist yet."""
    now = iso(datetime.now(UTC))
    return {
        "id": item_id_for(instance_id, key),
        "key": key,
        "namespace": NAMESPACE,
        "status": "queued",
        "checksum": "",
        "created_at": now,
        "last_seen_at": now,
        "source_id": "builtin",
        "next_action": "INDEX",
    }


async def index_key(
    runtime: Runtime, jobs: JobRunner, instance_id: str, key: str, wait: bool
) -> dict[str, Any]:
    """Index one object of the source now (`wait`) or in the background; either way after a
    running sync of the instance ends."""
    await jobs.index_item(instance_id, key, wait)
    if not wait:
        return envelope(pending_view(instance_id, key))
    item_id = item_id_for(instance_id, key)
    try:
        return envelope(item_view(await records.get_item(runtime.sessions, instance_id, item_id)))
    except NotFound:
        raise NotFound(f"{key!r} is not in the instance's source") from None


def content_type(key: str) -> str:
    guessed, _ = mimetypes.guess_type(key)
    return guessed or "application/octet-stream"


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


class ItemsController(Controller):
    path = "/instances/{instance_id:str}/items"

    @get("/")
    async def list_items(
        self,
        runtime: NamedDependency[Runtime],
        instance_id: FromPath[str],
        page: Page = 1,
        per_page: PerPage = 20,
        item_id: FromQuery[str | None] = None,
        key: FromQuery[str | None] = None,
        status: FromQuery[ItemStatus | None] = None,
        search: Search = None,
        sort_by: FromQuery[Literal["status", "modified_at"]] = "status",
        metadata_filter_json: Annotated[str | None, QueryParameter(name="metadata_filter")] = None,
    ) -> dict[str, Any]:
        check_page(page, per_page)
        await runtime.instances.get(instance_id)
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
        return paged([item_view(i) for i in rows], page, per_page, total)

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
        data = await upload.read()
        limits = SizeLimits(runtime.settings.max_file_bytes, runtime.settings.max_text_file_bytes)
        if len(data) > limits.cap_for(upload.filename):
            raise InvalidRequest(
                f"{upload.filename} is {len(data)} bytes, over the "
                f"{limits.cap_for(upload.filename)} byte limit for its type"
            )
        key = await uploads.save_upload(runtime.settings, row, cfg, upload.filename, data)
        wait = str(form.get("wait_for_completion", "")).lower() in ("true", "1")
        return await index_key(runtime, jobs, instance_id, key, wait)

    @get("/{item_id:str}")
    async def get_item(
        self, runtime: NamedDependency[Runtime], instance_id: FromPath[str], item_id: FromPath[str]
    ) -> dict[str, Any]:
        return envelope(item_view(await records.get_item(runtime.sessions, instance_id, item_id)))

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
        row, _ = await runtime.instances.get(instance_id)
        await uploads.remove_upload(runtime.settings, row, item.key)
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
                "item": {
                    "key": item.key,
                    "timestamp": m.metadata.get("timestamp"),
                    "metadata": {
                        k: v for k, v in m.metadata.items() if k not in ("text", "item_id")
                    },
                },
            }
            for m in found
        ]
        body = envelope(result, {"count": len(result), "total_count": item.chunks_count})
        return body

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
