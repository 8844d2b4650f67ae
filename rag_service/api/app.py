"""The Litestar application: routes, auth, error envelope, and the runtime's lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Router

from rag_service.api import health, legacy
from rag_service.api.auth import require_token
from rag_service.api.errors import EXCEPTION_HANDLERS
from rag_service.config import Settings
from rag_service.runtime import Runtime

MAX_BODY_BYTES = 1024 * 1024

Background = Callable[[Runtime], Coroutine[Any, Any, None]]


def create_app(
    settings: Settings,
    runtime: Runtime | None = None,
    background: Background | None = None,
) -> Litestar:
    """Build the app. `background` runs beside the server (the embedded scheduler of `ragd up`)."""
    rt = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await rt.start()
        task = asyncio.create_task(background(rt)) if background else None
        try:
            yield
        finally:
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await rt.close()

    protected = Router("/", route_handlers=[*legacy.ROUTES], guards=[require_token])
    app = Litestar(
        route_handlers=[*health.ROUTES, protected],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=None,
        debug=False,
    )
    app.state.settings = settings
    app.state.runtime = rt
    return app
