"""A per-instance Redis lock, renewed while held, so that two syncs of one instance never overlap
even across workers; it expires on its own when its holder dies."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

# A holder that dies (kill -9) blocks the instance for at most this long.
LOCK_TTL_MS = 30_000
RENEW_EVERY_S = 10.0

# Delete or extend the lock only while it still holds our token.
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)


def lock_key(instance_id: str) -> str:
    return f"ragd:sync-lock:{instance_id}"


@contextlib.asynccontextmanager
async def instance_lock(redis: Any, instance_id: str, wait: float = 0.0) -> AsyncIterator[bool]:
    """Yield True when the lock was taken within `wait` seconds (and hold it until exit), False
    when another holder kept it."""
    key, token = lock_key(instance_id), secrets.token_hex(16)
    deadline = asyncio.get_running_loop().time() + wait
    while not await redis.set(key, token, nx=True, px=LOCK_TTL_MS):
        if asyncio.get_running_loop().time() >= deadline:
            yield False
            return
        await asyncio.sleep(0.5)

    async def renew() -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            await redis.eval(_RENEW, 1, key, token, LOCK_TTL_MS)

    renewer = asyncio.create_task(renew())
    try:
        yield True
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await redis.eval(_RELEASE, 1, key, token)
