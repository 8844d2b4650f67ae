"""Cloudflare's `page` / `per_page` query parameters and `result_info`, and the bounds of the
other query parameters a listing takes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from litestar.params import QueryParameter

from rag_service.api.errors import envelope
from rag_service.errors import InvalidRequest

MAX_PER_PAGE = 100
MAX_PAGE = 1_000_000  # page * per_page must stay far inside a 64-bit SQL OFFSET
MAX_SEARCH_CHARS = 1024  # `search` texts become LIKE patterns; SQLite refuses them past 50,000

# Typed query parameters: Litestar checks the bounds (a 400) and the OpenAPI schema shows them.
Page = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="1-based page number")]
PerPage = Annotated[int, QueryParameter(ge=1, le=MAX_PER_PAGE, description="results per page")]
Search = Annotated[
    str | None,
    QueryParameter(max_length=MAX_SEARCH_CHARS, description="text the listed names contain"),
]


def check_page(page: int, per_page: int) -> None:
    """The same bounds for handlers whose parameters are plain ints."""
    if not 1 <= page <= MAX_PAGE:
        raise InvalidRequest(f"page must be between 1 and {MAX_PAGE}")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise InvalidRequest(f"per_page must be between 1 and {MAX_PER_PAGE}")


def check_search(search: str | None, name: str = "search") -> None:
    if search is not None and len(search) > MAX_SEARCH_CHARS:
        raise InvalidRequest(f"{name} is limited to {MAX_SEARCH_CHARS} characters")


def paged(result: Sequence[Any], page: int, per_page: int, total: int) -> dict[str, Any]:
    info = {"page": page, "per_page": per_page, "count": len(result), "total_count": total}
    return envelope(list(result), info)
