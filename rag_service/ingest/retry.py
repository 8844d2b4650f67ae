"""Retry an operation that failed for a passing reason (timeout, 5xx, rate limit), only that."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from rag_service.errors import RagError

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPTS = 4
BASE_DELAY_S = 0.5
MAX_DELAY_S = 8.0


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    *,
    attempts: int = ATTEMPTS,
    base_delay: float | None = None,
    what: str = "operation",
) -> T:
    """Run `operation`, again after an exponential, jittered pause while it fails transiently.

    A permanent error (a corrupt file, a bad token) is raised at once; so is the last transient
    one, once `attempts` are used up."""
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except RagError as exc:
            if not exc.transient or attempt == attempts:
                raise
            base = BASE_DELAY_S if base_delay is None else base_delay
            delay = random.uniform(0, min(MAX_DELAY_S, base * 2 ** (attempt - 1)))
            log.info("%s failed (%s); retry %d/%d in %.1f s", what, exc, attempt, attempts, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
