"""Client-side rate limits, sized to Workers AI's documented per-minute limits.

A sliding-window log per task: at most `limit` requests start in any `period` seconds, so a
large sync runs at the limit instead of bursting into 429s. A 429 with `Retry-After` holds the
whole task's window, so concurrent callers back off together.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

Task = Literal["text_generation", "embeddings", "embeddings_large", "other", "vectorize"]


@dataclass(frozen=True)
class RateLimits:
    """Requests per `period` seconds by task (Cloudflare's defaults, per account).

    `margin` seconds are added to the window: the server counts arrivals, the client counts
    departures, and a little network jitter would otherwise cost a 429 now and then.
    Vectorize has no documented per-minute figure; it gets the "other tasks" one.
    """

    text_generation: int = 300
    embeddings: int = 3000
    embeddings_large: int = 1500
    other: int = 720
    vectorize: int = 720
    period: float = 60.0
    margin: float = 0.25

    def limit(self, task: Task) -> int:
        value: int = getattr(self, task)
        return value


class SlidingWindowLimiter:
    """At most `limit` acquisitions in any window of `period` seconds (FIFO fair)."""

    def __init__(self, limit: int, period: float, margin: float = 0.0) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("a rate limit needs limit >= 1 and period > 0")
        self.limit, self.window = limit, period + margin
        self._starts: deque[float] = deque()
        self._held_until = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for a slot; callers are served in arrival order."""
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._starts and self._starts[0] <= now - self.window:
                    self._starts.popleft()
                wait = self._held_until - now
                if len(self._starts) >= self.limit:
                    wait = max(wait, self._starts[0] + self.window - now)
                if wait <= 0:
                    self._starts.append(now)
                    return
                await asyncio.sleep(wait)

    def hold(self, seconds: float) -> None:
        """Start nothing for `seconds` (the server said Retry-After)."""
        self._held_until = max(self._held_until, time.monotonic() + seconds)
