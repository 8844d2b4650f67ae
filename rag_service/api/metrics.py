"""Prometheus metrics: requests by route and status, latency, items by status."""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response, get
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from rag_service import records
from rag_service.runtime import Runtime


class Metrics:
    """One registry per app, so that several apps in one process (tests) don't collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ragd_http_requests",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ragd_http_request_duration_seconds",
            "Time to the response's first byte, by route",
            ["route"],
            registry=self.registry,
        )
        self.items = Gauge(
            "ragd_items",
            "Items by instance and status",
            ["instance", "status"],
            registry=self.registry,
        )

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def measure(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = [500]

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                    route = scope.get("path_template") or "unmatched"
                    self.latency.labels(route).observe(time.perf_counter() - started)
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                route = scope.get("path_template") or "unmatched"
                self.requests.labels(scope.get("method", ""), route, str(status[0])).inc()

        return measure

    async def refresh(self, runtime: Runtime) -> None:
        rows = await records.item_status_counts(runtime.sessions)
        self.items.clear()
        for instance, status, n in rows:
            self.items.labels(instance, status).set(n)


METRICS_TYPE = CONTENT_TYPE_LATEST.removesuffix("; charset=utf-8")


@get("/metrics", exclude_from_auth=True, media_type=METRICS_TYPE)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    m: Metrics = request.app.state.metrics
    await m.refresh(request.app.state.runtime)
    return Response(generate_latest(m.registry), media_type=METRICS_TYPE)


ROUTES = [metrics]
