"""Where the API's syncs and item changes run: in this process (`ragd up`) or on the arq worker
(`ragd serve`). Either way they take the instance's lock, so that an upload, an item sync or a
delete never overlaps a sync of the same instance: it waits for the sync to end."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rag_service import queue, records
from rag_service.errors import BackendError, RagError
from rag_service.runtime import Runtime

log = logging.getLogger("ragd.jobs")
START_WAIT_SECONDS = 30.0
ITEM_WAIT_SECONDS = 600.0  # an item change asked to wait: for a running sync, then itself
NO_WORKER = "no worker is running: the job starts with `ragd worker`"


@dataclass
class Started:
    job_id: str
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class JobRunner(Protocol):
    async def start_sync(self, instance_id: str, description: str | None) -> Started:
        """Start (or queue) a sync; returns once its job can be read back or is queued."""
        ...

    async def pending(self, job_id: str) -> bool:
        """Whether a sync that has no row yet is still to run."""
        ...

    async def index_item(self, instance_id: str, key: str, wait: bool) -> None:
        """(Re)index one object of the source: now (`wait`) or in the background."""
        ...

    async def delete_item(self, instance_id: str, key: str) -> bool:
        """Drop one item's chunks and row; False when the instance has no such item."""
        ...

    async def is_syncing(self, instance_id: str) -> bool: ...

    async def close(self) -> None: ...


class InlineJobs:
    """Syncs and item changes run as tasks of this process, under its per-instance lock."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.tasks: dict[str, asyncio.Task[object]] = {}

    async def start_sync(self, instance_id: str, description: str | None) -> Started:
        """A sync already running for the instance raises Conflict."""
        job_id = str(uuid.uuid4())
        task = self._spawn(job_id, self.runtime.sync(instance_id, "user", job_id=job_id))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_WAIT_SECONDS
        while loop.time() < deadline:
            if task.done():
                task.result()  # a refused sync (Conflict) or a failure before it began
                break
            if await records.get_job(self.runtime.sessions, instance_id, job_id) is not None:
                break
            await asyncio.sleep(0.05)
        await records.describe_job(self.runtime.sessions, job_id, description)
        return Started(job_id)

    async def pending(self, job_id: str) -> bool:
        return job_id in self.tasks

    async def index_item(self, instance_id: str, key: str, wait: bool) -> None:
        work = self.runtime.index_item(instance_id, key)
        if wait:
            await work
        else:
            self._spawn(f"index:{instance_id}:{key}:{uuid.uuid4()}", work)

    async def delete_item(self, instance_id: str, key: str) -> bool:
        return await self.runtime.delete_item(instance_id, key)

    async def is_syncing(self, instance_id: str) -> bool:
        return self.runtime.is_syncing(instance_id)

    def _spawn(self, name: str, work: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        """Background work of the API, cancelled on shutdown."""
        task: asyncio.Task[object] = asyncio.create_task(work)
        self.tasks[name] = task
        task.add_done_callback(lambda t: self._finished(name, t))
        return task

    def _finished(self, name: str, task: asyncio.Task[object]) -> None:
        self.tasks.pop(name, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            message = exc.message if isinstance(exc, RagError) else repr(exc)
            log.warning("background task %s ended with an error: %s", name, message)

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class QueuedJobs:
    """Everything goes to `ragd worker` through the queue; the worker takes the instance's
    Redis lock for syncs and item changes alike."""

    def __init__(self, runtime: Runtime) -> None:
        self.settings = runtime.settings

    async def start_sync(self, instance_id: str, description: str | None) -> Started:
        async with queue.queue_pool(self.settings) as pool:
            job_id, _ = await queue.enqueue_sync(pool, instance_id, description)
            return Started(job_id, [] if await queue.worker_alive(pool) else [NO_WORKER])

    async def pending(self, job_id: str) -> bool:
        try:
            async with queue.queue_pool(self.settings) as pool:
                return await queue.queued_sync(pool, job_id)
        except BackendError:
            return False

    async def index_item(self, instance_id: str, key: str, wait: bool) -> None:
        await self._item_task(queue.INDEX_ITEM_TASK, instance_id, key, wait)

    async def delete_item(self, instance_id: str, key: str) -> bool:
        result = await self._item_task(queue.DELETE_ITEM_TASK, instance_id, key, wait=True)
        return result.get("status") == "deleted"

    async def is_syncing(self, instance_id: str) -> bool:
        async with queue.queue_pool(self.settings) as pool:
            return bool(await pool.exists(queue.lock_key(instance_id)))

    async def close(self) -> None:
        return None

    async def _item_task(self, task: str, instance_id: str, key: str, wait: bool) -> dict[str, Any]:
        async with queue.queue_pool(self.settings) as pool:
            if wait and not await queue.worker_alive(pool, queue.WORKER_START_WAIT_S):
                raise BackendError(f"{NO_WORKER}: start it and ask again")
            queued = await pool.enqueue_job(task, instance_id, key, _job_id=queue.item_job_id())
            assert queued is not None  # a fresh uuid cannot collide
            if not wait:
                return {}
            try:
                await queued.result(timeout=ITEM_WAIT_SECONDS, poll_delay=0.1)
            except TimeoutError as exc:
                raise BackendError(f"the worker did not finish {key!r} in time") from exc
            except Exception:  # the task's own error: reported by task_result below
                pass
            return await queue.task_result(queued)
