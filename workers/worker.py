"""The arq worker of `ragd worker`, built from a Settings object (not from import-time state)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from arq import cron
from arq.constants import in_progress_key_prefix
from arq.worker import Worker
from redis.exceptions import RedisError

from rag_service.config import Settings
from rag_service.queue import (
    HEALTH_CHECK_SECONDS,
    LOCK_TTL_MS,
    QUEUE,
    deserialize,
    health_check_key,
    redis_settings,
    serialize,
)
from rag_service.runtime import Runtime
from workers.tasks import (
    JOB_TIMEOUT_S,
    MAX_TRIES,
    delete_item,
    enqueue_due_syncs,
    index_item,
    sync_instance,
)

log = logging.getLogger("ragd.worker")
REDIS_RETRY_S = 2.0
# arq marks a job it runs as in progress for the job timeout (hours): a worker killed mid-job
# would keep it from every other worker that long. Here the mark lasts a minute and is renewed
# while the job runs, so another worker takes a dead worker's job over within a minute (after
# the instance's lock, LOCK_TTL_MS, has expired too).
IN_PROGRESS_TTL_S = 60.0
RENEW_IN_PROGRESS_S = IN_PROGRESS_TTL_S / 4
assert IN_PROGRESS_TTL_S * 1000 > LOCK_TTL_MS


class ResilientWorker(Worker):
    """arq's worker, kept alive through a Redis outage: a poll that cannot reach Redis waits
    and tries again (arq's own loop would end the process), running jobs go on. Its jobs'
    in-progress marks are short and renewed (IN_PROGRESS_TTL_S)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = IN_PROGRESS_TTL_S
        self._renewed_at = 0.0

    async def heart_beat(self) -> None:
        await super().heart_beat()
        now = time.monotonic()
        if now - self._renewed_at >= RENEW_IN_PROGRESS_S:
            self._renewed_at = now
            ttl_ms = int(IN_PROGRESS_TTL_S * 1000)
            for job_id, task in list(self.tasks.items()):
                if not task.done():
                    await self.pool.pexpire(in_progress_key_prefix + job_id, ttl_ms)

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            log.warning("Redis is unreachable (%s): polling again in %.0f s", exc, REDIS_RETRY_S)
            await asyncio.sleep(REDIS_RETRY_S)


def build_worker(
    settings: Settings,
    *,
    burst: bool = False,
    runtime: Runtime | None = None,
    handle_signals: bool = True,
    **options: Any,
) -> Worker:
    rt = runtime or Runtime(settings)

    async def startup(ctx: dict[str, Any]) -> None:
        await rt.start()
        ctx["runtime"] = rt

    async def shutdown(ctx: dict[str, Any]) -> None:
        await rt.close()

    return ResilientWorker(
        functions=[sync_instance, index_item, delete_item],
        cron_jobs=[cron(enqueue_due_syncs, second={0}, run_at_startup=True)],
        queue_name=QUEUE,
        redis_settings=redis_settings(settings),
        on_startup=startup,
        on_shutdown=shutdown,
        burst=burst,
        max_jobs=4,
        job_timeout=JOB_TIMEOUT_S,
        max_tries=MAX_TRIES,
        health_check_interval=HEALTH_CHECK_SECONDS,
        health_check_key=health_check_key(),
        job_serializer=serialize,
        job_deserializer=deserialize,
        handle_signals=handle_signals,
        **options,
    )
