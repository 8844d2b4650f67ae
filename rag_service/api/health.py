"""Liveness."""

from __future__ import annotations

from typing import Any

from litestar import get

from rag_service.api.errors import envelope


@get("/healthz", exclude_from_auth=True)
async def healthz() -> dict[str, Any]:
    return envelope({"status": "ok"})


ROUTES = [healthz]
