"""Key/value facts about the database itself."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import AppMeta


async def get(db: AsyncSession, key: str) -> str | None:
    return (await db.execute(select(AppMeta.value).where(AppMeta.key == key))).scalar_one_or_none()


async def put(db: AsyncSession, key: str, value: str) -> None:
    row = await db.get(AppMeta, key)
    if row is None:
        db.add(AppMeta(key=key, value=value))
    else:
        row.value = value
    await db.flush()
