"""Liveness and readiness (database, Redis when a worker runs the syncs, the data dir)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from litestar import Request, Response, get
from sqlalchemy import text

from rag_service.api.errors import envelope
from rag_service.job_runner import QueuedJobs
from rag_service.runtime import Runtime

CHECK_SECONDS = 5.0


@get("/healthz", exclude_from_auth=True)
async def healthz() -> dict[str, Any]:
    return envelope({"status": "ok"})


async def _database(runtime: Runtime) -> str:
    async with runtime.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return "ok"


async def _redis(runtime: Runtime) -> str:
    from redis.asyncio import Redis

    client = Redis.from_url(runtime.settings.redis_url, socket_connect_timeout=CHECK_SECONDS)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return "ok"


async def _data_dir(runtime: Runtime) -> str:
    path = runtime.settings.data_dir
    if not await asyncio.to_thread(os.access, path, os.W_OK):
        raise OSError(f"{path} is not writable")
    return "ok"


def _backend(runtime: Runtime) -> str:
    st = runtime.settings
    if st.backend == "cloudflare" and not (st.cloudflare_account_id and st.cloudflare_api_token):
        raise ValueError("RAGD_CLOUDFLARE_ACCOUNT_ID and RAGD_CLOUDFLARE_API_TOKEN are not set")
    return "ok"


async def _check(name: str, work: Any) -> tuple[str, str]:
    try:
        result = await asyncio.wait_for(work, CHECK_SECONDS) if asyncio.iscoroutine(work) else work
        return name, str(result)
    except Exception as exc:  # any failure means not ready; say which and why
        return name, f"error: {type(exc).__name__}: {exc}"[:300]


@get("/readyz", exclude_from_auth=True)
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    runtime: Runtime = request.app.state.runtime
    checks = [
        _check("database", _database(runtime)),
        _check("data_dir", _data_dir(runtime)),
    ]
    if isinstance(request.app.state.jobs, QueuedJobs):
        checks.append(_check("redis", _redis(runtime)))
    results = dict(await asyncio.gather(*checks))
    try:
        results["backend"] = _backend(runtime)
    except ValueError as exc:
        results["backend"] = f"error: {exc}"
    ready = all(v == "ok" for v in results.values())
    body = envelope({"status": "ready" if ready else "not ready", "checks": results})
    if not ready:
        body["success"] = False
        body["errors"] = [
            {"code": 7503, "message": f"{k}: {v}"} for k, v in results.items() if v != "ok"
        ]
    return Response(body, status_code=200 if ready else 503)


ROUTES = [healthz, readyz]
