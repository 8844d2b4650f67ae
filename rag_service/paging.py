"""One page of rows: of a query (and how many rows there are in all), or of rows read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


def page_of(rows: Sequence[T], page: int, per_page: int) -> list[T]:
    """The rows of page `page` (from 1) of rows already read."""
    start = (page - 1) * per_page
    return list(rows[start : start + per_page])


async def count_and_page(
    session: AsyncSession, query: Select[T], page: int, per_page: int
) -> tuple[int, list[T]]:
    """`page` counts from 1."""
    total = await session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = await session.scalars(query.offset((page - 1) * per_page).limit(per_page))
    return int(total or 0), list(rows.all())
