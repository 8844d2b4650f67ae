"""Cloudflare's `page` / `per_page` query parameters and `result_info`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rag_service.api.errors import envelope
from rag_service.errors import InvalidRequest

MAX_PER_PAGE = 100


def check_page(page: int, per_page: int) -> None:
    if page < 1:
        raise InvalidRequest("page must be 1 or more")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise InvalidRequest(f"per_page must be between 1 and {MAX_PER_PAGE}")


def paged(result: Sequence[Any], page: int, per_page: int, total: int) -> dict[str, Any]:
    info = {"page": page, "per_page": per_page, "count": len(result), "total_count": total}
    return envelope(list(result), info)
