"""Queries for uploaded files."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Upload


async def add(db: AsyncSession, row: Upload) -> Upload:
    db.add(row)
    await db.flush()
    return row


async def get_by_name(db: AsyncSession, stored_name: str, *, owner_id: str | None) -> Upload | None:
    query = select(Upload).where(Upload.stored_name == stored_name)
    if owner_id is not None:
        query = query.where(Upload.user_id == owner_id)
    return (await db.execute(query)).scalar_one_or_none()


async def count(db: AsyncSession) -> int:
    return (await db.execute(select(func.count(Upload.id)))).scalar_one()


async def total_size_for_user(db: AsyncSession, user_id: str) -> int:
    """Bytes a user has stored (for the per-user quota)."""
    query = select(func.coalesce(func.sum(Upload.size), 0)).where(Upload.user_id == user_id)
    return int((await db.execute(query)).scalar_one())
