"""One page of a query's rows, and how many rows there are in all."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


async def count_and_page(
    session: AsyncSession, query: Select[T], page: int, per_page: int
) -> tuple[int, list[T]]:
    """`page` counts from 1."""
    total = await session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = await session.scalars(query.offset((page - 1) * per_page).limit(per_page))
    return int(total or 0), list(rows.all())
