"""The Litestar application: routes, auth, error envelope, and the runtime's lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Literal

from litestar import Litestar, Request, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from rag_service.api import health, legacy, metrics, playground
from rag_service.api.auth import require_token
from rag_service.api.errors import EXCEPTION_HANDLERS, document_errors
from rag_service.api.instances import InstancesController
from rag_service.api.items import ItemsController
from rag_service.api.jobs import JobsController
from rag_service.api.namespaces import NamespacesController, scope_instance
from rag_service.api.search import SearchController
from rag_service.api.tokens import TokensController
from rag_service.config import Settings
from rag_service.job_runner import InlineJobs, JobRunner, QueuedJobs
from rag_service.runtime import Runtime
from rag_service.tokens import TokenStore

MAX_BODY_BYTES = 1024 * 1024
AI_SEARCH = "/accounts/{account_id:str}/ai-search"

Background = Callable[[Runtime], Coroutine[Any, Any, None]]
BEARER = "bearer"  # the security scheme of every route but health, metrics and the playground


class SchemaJson(JsonRenderPlugin):
    """The OpenAPI schema as JSON, with the error envelope every failure is answered with."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rendered: dict[int, bytes] = {}

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        key = id(openapi_schema)  # Litestar builds the schema once and keeps it
        if key not in self._rendered:
            self._rendered = {key: self.render_json(request, document_errors(openapi_schema))}
        return self._rendered[key]


def provide_runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


def provide_jobs(state: State) -> JobRunner:
    jobs: JobRunner = state.jobs
    return jobs


def routes() -> list[Router]:
    """AI Search's namespaces, its instance routes with and without the namespace (without:
    the `default` namespace), and the token routes."""
    controllers = [InstancesController, SearchController, JobsController, ItemsController]
    return [
        Router(
            AI_SEARCH, route_handlers=[*controllers, NamespacesController], guards=[scope_instance]
        ),
        Router(
            f"{AI_SEARCH}/namespaces/{{namespace:str}}",
            route_handlers=controllers,
            guards=[scope_instance],
        ),
        Router("/accounts/{account_id:str}", route_handlers=[TokensController]),
        Router("/user", route_handlers=[TokensController]),
    ]


def create_app(
    settings: Settings,
    runtime: Runtime | None = None,
    background: Background | None = None,
    job_runner: Literal["inline", "queue"] = "inline",
) -> Litestar:
    """Build the app. `background` runs beside the server (the embedded scheduler of `ragd up`);
    `job_runner` says where `POST .../jobs` syncs run: here (`inline`) or on the arq worker."""
    rt = runtime or Runtime(settings)
    jobs: JobRunner = InlineJobs(rt) if job_runner == "inline" else QueuedJobs(rt)
    meter = metrics.Metrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await rt.start()
        await app.state.tokens.import_file(settings.data_dir)
        task = asyncio.create_task(background(rt)) if background else None
        try:
            yield
        finally:
            await jobs.close()
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await rt.close()

    protected = Router(
        "/",
        route_handlers=[*legacy.ROUTES, *routes()],
        guards=[require_token],
        security=[{BEARER: []}],
    )
    app = Litestar(
        route_handlers=[*health.ROUTES, *metrics.ROUTES, *playground.ROUTES, protected],
        dependencies={
            "runtime": Provide(provide_runtime, sync_to_thread=False),
            "jobs": Provide(provide_jobs, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[meter.middleware],
        lifespan=[lifespan],
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="rag-service",
            version="0.1.0",
            description="Cloudflare AutoRAG / AI Search compatible API",
            render_plugins=[SchemaJson(path=["/", "/openapi.json"])],
            openapi_router=Router(
                "/schema", route_handlers=[], guards=[require_token], include_in_schema=False
            ),
            components=Components(
                security_schemes={
                    BEARER: SecurityScheme(
                        type="http", scheme="bearer", description="An API token of ragd"
                    )
                }
            ),
        ),
        debug=False,
    )
    app.state.settings = settings
    app.state.runtime = rt
    app.state.tokens = TokenStore(rt.sessions)
    app.state.jobs = jobs
    app.state.metrics = meter
    return app
