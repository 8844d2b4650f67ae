"""The embedded scheduler of `ragd up`: sync every instance at start, then on its interval."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from rag_service.errors import Conflict, RagError
from rag_service.instance_registry import DEFAULT_INSTANCE
from rag_service.instances import instance_config
from rag_service.records import list_instances
from rag_service.runtime import Runtime

log = logging.getLogger("ragd.scheduler")
TICK_SECONDS = 30.0


async def sync_due(runtime: Runtime, last_run: dict[str, float], now: float) -> None:
    """Sync each instance whose interval has passed since its last run here (or never ran),
    unless it is paused."""
    async with runtime.sessions() as session:
        rows = await list_instances(session)
    for row in rows:
        cfg = instance_config(row)
        if cfg.paused or now - last_run.get(row.id, float("-inf")) < cfg.sync_interval:
            continue
        last_run[row.id] = now
        try:
            result = await runtime.sync(row.id, job_source="schedule")
            log.info("sync of %s %s: %s", row.id, result.status, result.end_reason)
        except Conflict:
            log.info("sync of %s skipped: one is already running", row.id)
        except RagError as exc:
            log.error("sync of %s failed: %s", row.id, exc.message)


async def warm_default_generator(runtime: Runtime) -> None:
    """Load the answer model in the background so that the first question does not wait."""
    try:
        _, cfg = await runtime.instances.get(DEFAULT_INSTANCE)
        await runtime.providers.generator(cfg)
        log.info("generation model ready")
    except Exception:  # the first ai-search will retry and report the cause
        log.exception("could not load the generation model")


async def run_embedded(runtime: Runtime) -> None:
    """What `ragd up` runs beside the API: the scheduler, and once the first sync is done
    (search works from then on), the answer model's warm-up."""
    warm: list[asyncio.Task[None]] = []

    def after_first_tick() -> None:
        warm.append(asyncio.create_task(warm_default_generator(runtime)))

    await run_scheduler(runtime, after_first_tick=after_first_tick)


async def run_scheduler(
    runtime: Runtime,
    tick: float = TICK_SECONDS,
    after_first_tick: Callable[[], None] | None = None,
) -> None:
    last_run: dict[str, float] = {}
    while True:
        try:
            await sync_due(runtime, last_run, time.monotonic())
        except Exception:  # keep the scheduler alive; the next tick tries again
            log.exception("scheduler tick failed")
        if after_first_tick is not None:
            after_first_tick()
            after_first_tick = None
        await asyncio.sleep(tick)
