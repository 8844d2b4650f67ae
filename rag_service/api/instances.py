"""AI Search instances: list, read, create, update, delete, stats."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from litestar import Controller, Request, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from pydantic import Field

from rag_service import instance_changes, instances, records
from rag_service.api.errors import envelope, unused_notes
from rag_service.api.namespaces import namespace_of
from rag_service.api.paging import Page, PerPage, Search, check_page, check_search, paged
from rag_service.api.requests import json_body, read_object
from rag_service.api.views import instance_view, iso
from rag_service.errors import Conflict, InvalidRequest
from rag_service.instances import INSTANCE_ID, SYNC_INTERVALS, InstanceConfig, check_instance_id
from rag_service.job_runner import JobRunner
from rag_service.models import Instance
from rag_service.namespaces import instance_key, split_key
from rag_service.paging import page_of
from rag_service.retrieve.cache import AnswerCache
from rag_service.runtime import Runtime
from rag_service.stats import instance_stats

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
RENAMED = {"aisearch_model": "ai_search_model", "system_prompt_aisearch": "system_prompt"}
CONFIG_FIELDS = frozenset(InstanceConfig.model_fields) - {"system_prompt"}
ACCEPTED = frozenset({"id", "source", "hybrid_search_enabled", *RENAMED}) | CONFIG_FIELDS


class InstanceUpdate(InstanceConfig):
    """An AI Search instance's fields; unknown fields are accepted, unused and named in
    `messages`."""

    id: str | None = None
    source: str | None = Field(
        None,
        max_length=4096,
        pattern=r"^[^\x00-\x1f\x7f-\x9f]*$",
        description="a folder path, s3://bucket/prefix or a bucket name",
    )
    hybrid_search_enabled: bool | None = None
    aisearch_model: str | None = None
    system_prompt_aisearch: str | None = None
    sync_interval: int = Field(21600, json_schema_extra={"enum": list(SYNC_INTERVALS)})


class InstanceCreate(InstanceUpdate):
    """A new AI Search instance; unknown fields are accepted, unused and named in `messages`."""

    id: str = Field(pattern=INSTANCE_ID.pattern, description="the new instance's id")


INSTANCE_BODY = {"additionalProperties": True}


def config_changes(body: dict[str, Any]) -> tuple[str | None, dict[str, Any], list[str]]:
    """AI Search's instance fields -> (source, config changes, fields accepted but unused)."""
    source = body.get("source")
    if source is not None and (
        not isinstance(source, str) or len(source) > 4096 or CONTROL.search(source)
    ):
        raise InvalidRequest(
            "source must be a folder path, s3://bucket/prefix or a bucket name "
            "(without control characters)"
        )
    if body.get("type") == "web-crawler":
        raise InvalidRequest(
            "web-crawler sources are not supported: use a folder path, s3://bucket/prefix or an "
            "R2 bucket name (type 'r2')"
        )
    changes = {
        RENAMED.get(k, k): v
        for k, v in body.items()
        if v is not None and RENAMED.get(k, k) in CONFIG_FIELDS | {"system_prompt"}
    }
    hybrid = body.get("hybrid_search_enabled")
    if hybrid is not None and not isinstance(hybrid, bool):
        raise InvalidRequest("hybrid_search_enabled must be true or false")
    if isinstance(hybrid, bool) and "index_method" not in body:
        changes["index_method"] = {"vector": True, "keyword": hybrid}
    unused = sorted(k for k in body if k not in ACCEPTED)
    return source or None, changes, unused


async def view(runtime: Runtime, row: Instance) -> dict[str, Any]:
    cfg = instances.instance_config(row)
    return instance_view(
        row, cfg, runtime.settings, await records.last_activity(runtime.sessions, row.id)
    )


class InstancesController(Controller):
    path = "/instances"

    @get("/")
    async def list_instances(
        self,
        runtime: NamedDependency[Runtime],
        request: Request[Any, Any, Any],
        page: Page = 1,
        per_page: PerPage = 20,
        search: Search = None,
        namespace_filter: Annotated[
            str | None, QueryParameter(name="namespace", max_length=64)
        ] = None,
        order_by: FromQuery[Literal["created_at"]] = "created_at",
        order_by_direction: FromQuery[Literal["asc", "desc"]] = "desc",  # newest first
    ) -> dict[str, Any]:
        """A namespace's instances; un-namespaced (deprecated), every namespace's unless
        `?namespace=` names one."""
        check_page(page, per_page)
        check_search(search)
        namespace = request.path_params.get("namespace") or namespace_filter
        rows = await records.find_instances(
            runtime.sessions, namespace, search, newest_first=order_by_direction == "desc"
        )
        shown = [await view(runtime, r) for r in page_of(rows, page, per_page)]
        return paged(shown, page, per_page, len(rows))

    @post("/", status_code=200, operation_class=json_body(InstanceCreate, **INSTANCE_BODY))
    async def create_instance(
        self, runtime: NamedDependency[Runtime], request: Request[Any, Any, Any]
    ) -> Any:
        body = await read_object(request)
        name = body.get("id")
        if not isinstance(name, str):
            raise InvalidRequest("id is required: the new instance's id (e.g. 'docs')")
        source, changes, unused = config_changes(body)
        key = instance_key(namespace_of(request), check_instance_id(name))
        row = await instance_changes.create_instance(runtime, key, source, changes)
        result = envelope(await view(runtime, row))
        result["messages"] = unused_notes(unused)
        return result

    @get("/{instance_id:str}")
    async def read_instance(
        self, runtime: NamedDependency[Runtime], instance_id: FromPath[str]
    ) -> dict[str, Any]:
        row, _ = await runtime.instances.get(instance_id)
        return envelope(await view(runtime, row))

    @put("/{instance_id:str}", operation_class=json_body(InstanceUpdate, **INSTANCE_BODY))
    async def update_instance(
        self,
        runtime: NamedDependency[Runtime],
        request: Request[Any, Any, Any],
        instance_id: FromPath[str],
    ) -> Any:
        body = await read_object(request)
        if body.get("id") not in (None, split_key(instance_id)[1]):
            raise InvalidRequest("an instance's id cannot change")
        source, changes, unused = config_changes(body)
        row = await instance_changes.update_instance(runtime, instance_id, source, changes)
        result = envelope(await view(runtime, row))
        result["messages"] = unused_notes(unused)
        return result

    @delete("/{instance_id:str}", status_code=200)
    async def delete_instance(
        self,
        runtime: NamedDependency[Runtime],
        jobs: NamedDependency[JobRunner],
        instance_id: FromPath[str],
    ) -> dict[str, Any]:
        await runtime.instances.get(instance_id)
        if await jobs.is_syncing(instance_id):
            raise Conflict(f"instance {instance_id!r} is syncing: delete it when the job has ended")
        row = await instance_changes.delete_instance(runtime, instance_id)
        return envelope(instance_view(row, instances.instance_config(row), runtime.settings))

    @post("/{instance_id:str}/purge_cache", status_code=200)
    async def purge_cache(
        self, runtime: NamedDependency[Runtime], instance_id: FromPath[str]
    ) -> dict[str, Any]:
        """Empty the instance's similarity cache (AI Search's purge_cache)."""
        await runtime.instances.get(instance_id)
        cache = AnswerCache(runtime.sessions, instance_id)
        return envelope({"id": split_key(instance_id)[1], "purged": await cache.purge()})

    @get("/{instance_id:str}/stats")
    async def stats(
        self, runtime: NamedDependency[Runtime], instance_id: FromPath[str]
    ) -> dict[str, Any]:
        _, cfg = await runtime.instances.get(instance_id)
        index = await runtime.providers.index(instance_id, cfg)
        result = await instance_stats(runtime.sessions, instance_id, index)
        result["last_activity"] = iso(result["last_activity"])
        return envelope(result)
