"""Sync jobs of an instance: start one, list them, read one and its log, cancel one."""

from __future__ import annotations

from typing import Any, Literal

from litestar import Controller, Request, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from pydantic import Field

from rag_service import records
from rag_service.api.errors import envelope
from rag_service.api.options import Lenient
from rag_service.api.paging import Page, PerPage, check_page, paged
from rag_service.api.requests import json_body, read_json
from rag_service.api.views import job_view, log_view, queued_job_view
from rag_service.errors import NotFound
from rag_service.job_runner import JobRunner, cancel_sync
from rag_service.runtime import Runtime


class JobCreate(Lenient):
    """A sync job of the instance (the body is optional)."""

    description: str | None = Field(None, max_length=1000)


class JobUpdate(Lenient):
    """What to do with a job: AI Search knows one action, `cancel`."""

    action: Literal["cancel"] = Field(description="`cancel`: stop the job at an item boundary")


async def read_job_body(request: Request[Any, Any, Any]) -> JobCreate:
    """The body is optional here (the SDK sends none without a description)."""
    if not (await request.body()).strip():
        return JobCreate()
    return await read_json(request, JobCreate)


class JobsController(Controller):
    path = "/instances/{instance_id:str}/jobs"

    @post("/", status_code=200, operation_class=json_body(JobCreate, required=False))
    async def create_job(
        self,
        runtime: NamedDependency[Runtime],
        jobs: NamedDependency[JobRunner],
        request: Request[Any, Any, Any],
        instance_id: FromPath[str],
    ) -> dict[str, Any]:
        body = await read_job_body(request)
        await runtime.instances.get(instance_id)
        started = await jobs.start_sync(instance_id, body.description)
        job = await records.get_job(runtime.sessions, instance_id, started.job_id)
        result = envelope(
            job_view(job) if job else queued_job_view(started.job_id, body.description)
        )
        result["messages"] = [{"code": 7300, "message": note} for note in started.notes]
        return result

    @get("/")
    async def list_jobs(
        self,
        runtime: NamedDependency[Runtime],
        instance_id: FromPath[str],
        page: Page = 1,
        per_page: PerPage = 20,
    ) -> dict[str, Any]:
        check_page(page, per_page)
        await runtime.instances.get(instance_id)
        total, rows = await records.list_jobs(runtime.sessions, instance_id, page, per_page)
        return paged([job_view(j) for j in rows], page, per_page, total)

    @get("/{job_id:str}")
    async def get_job(
        self,
        runtime: NamedDependency[Runtime],
        jobs: NamedDependency[JobRunner],
        instance_id: FromPath[str],
        job_id: FromPath[str],
    ) -> dict[str, Any]:
        await runtime.instances.get(instance_id)
        job = await records.get_job(runtime.sessions, instance_id, job_id)
        if job is not None:
            return envelope(job_view(job))
        if await jobs.pending(job_id):
            return envelope(queued_job_view(job_id, None))
        raise NotFound(f"job {job_id!r} not found in instance {instance_id!r}")

    @get("/{job_id:str}/logs")
    async def job_logs(
        self,
        runtime: NamedDependency[Runtime],
        instance_id: FromPath[str],
        job_id: FromPath[str],
        page: Page = 1,
        per_page: PerPage = 50,
    ) -> dict[str, Any]:
        check_page(page, per_page)
        await runtime.instances.get(instance_id)
        if await records.get_job(runtime.sessions, instance_id, job_id) is None:
            raise NotFound(f"job {job_id!r} not found in instance {instance_id!r}")
        total, rows = await records.job_logs(runtime.sessions, job_id, page, per_page)
        return paged([log_view(line) for line in rows], page, per_page, total)

    @patch("/{job_id:str}", operation_class=json_body(JobUpdate))
    async def update_job(
        self,
        runtime: NamedDependency[Runtime],
        request: Request[Any, Any, Any],
        instance_id: FromPath[str],
        job_id: FromPath[str],
    ) -> dict[str, Any]:
        """Cancel a queued or running job (409 once it has ended); the job as it then is."""
        await read_json(request, JobUpdate)
        await runtime.instances.get(instance_id)
        return envelope(job_view(await cancel_sync(runtime.sessions, instance_id, job_id)))
