"""Queries for messages."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Message, utcnow


async def add(
    db: AsyncSession,
    *,
    session_id: str,
    user_id: str,
    role: str,
    content: str,
    parts: list[dict[str, Any]] | None = None,
    status: str = "complete",
    engine: str | None = None,
    sources: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    latency_ms: int | None = None,
) -> Message:
    row = Message(
        session_id=session_id,
        user_id=user_id,
        role=role,
        content=content,
        parts=parts,
        status=status,
        engine=engine,
        sources=sources,
        usage=usage,
        latency_ms=latency_ms,
        created_at=utcnow(),
    )
    db.add(row)
    await db.flush()
    return row


async def list_recent(db: AsyncSession, session_id: str, *, owner_id: str | None, limit: int) -> list[Message]:
    """The session's last `limit` messages, oldest first."""
    query = select(Message).where(Message.session_id == session_id)
    if owner_id is not None:
        query = query.where(Message.user_id == owner_id)
    rows = list((await db.execute(query.order_by(Message.id.desc()).limit(limit))).scalars())
    rows.reverse()
    return rows
