"""Queries for canned replies (快捷回复): an agent's own and the shared ones (owner_id "")."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import CannedReply

SHARED = ""


async def visible_to(db: AsyncSession, owner_id: str) -> list[CannedReply]:
    """The agent's own replies, then the shared ones, each by shortcut."""
    query = (
        select(CannedReply)
        .where(CannedReply.owner_id.in_([owner_id, SHARED]))
        .order_by(case((CannedReply.owner_id == SHARED, 1), else_=0), CannedReply.shortcut, CannedReply.id)
    )
    return list((await db.execute(query)).scalars())


async def get(db: AsyncSession, reply_id: int) -> CannedReply | None:
    return await db.get(CannedReply, reply_id)


async def count_for(db: AsyncSession, owner_id: str) -> int:
    query = select(func.count()).select_from(CannedReply).where(CannedReply.owner_id == owner_id)
    return int((await db.execute(query)).scalar_one())


async def find(db: AsyncSession, owner_id: str, shortcut: str) -> CannedReply | None:
    query = select(CannedReply).where(CannedReply.owner_id == owner_id, CannedReply.shortcut == shortcut)
    return (await db.execute(query)).scalar_one_or_none()


async def add(db: AsyncSession, *, owner_id: str, shortcut: str, content: str, at: datetime) -> CannedReply:
    row = CannedReply(owner_id=owner_id, shortcut=shortcut, content=content, created_at=at, updated_at=at)
    db.add(row)
    await db.flush()
    return row
