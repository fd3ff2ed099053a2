"""Queries for chat sessions. Every read takes the owner it is for (None: a trusted caller, any owner)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import ChatSession, Message, utcnow


async def get(db: AsyncSession, session_id: str, *, owner_id: str | None) -> ChatSession | None:
    query = select(ChatSession).where(ChatSession.id == session_id)
    if owner_id is not None:
        query = query.where(ChatSession.user_id == owner_id)
    return (await db.execute(query)).scalar_one_or_none()


async def create(
    db: AsyncSession,
    *,
    session_id: str,
    user_id: str,
    title: str,
    description: str = "",
    meta: dict[str, Any] | None = None,
) -> ChatSession:
    now = utcnow()
    row = ChatSession(
        id=session_id,
        user_id=user_id,
        title=title,
        description=description,
        meta=meta or {},
        status="active",
        message_count=0,
        created_at=now,
        last_activity_at=now,
    )
    db.add(row)
    await db.flush()
    return row


async def list_for_user(db: AsyncSession, user_id: str, *, limit: int, offset: int) -> list[ChatSession]:
    query = (
        select(ChatSession)
        .where(ChatSession.user_id == user_id)
        .order_by(ChatSession.last_activity_at.desc(), ChatSession.id)
        .limit(limit)
        .offset(offset)
    )
    return list((await db.execute(query)).scalars())


async def record_messages(
    db: AsyncSession,
    session_id: str,
    *,
    count: int,
    at: datetime,
    owner_id: str | None = None,
    status: str | None = None,
) -> str | None:
    """Move the session's message count and last activity (atomic increment, safe under
    concurrency), and set its status when given. Returns the session's status, None when there is
    no such session (of `owner_id`, when given).

    First in a transaction that stores messages, it takes the session row's lock (SQLite: the
    write lock; PostgreSQL: the row lock an erasure's FOR UPDATE waits for), so an erasure is
    wholly before this transaction (no row: nothing is stored) or after it (it removes it all)."""
    values: dict[str, Any] = {"message_count": ChatSession.message_count + count, "last_activity_at": at}
    if status is not None:
        values["status"] = status
    query = update(ChatSession).where(ChatSession.id == session_id)
    if owner_id is not None:
        query = query.where(ChatSession.user_id == owner_id)
    query = query.values(values).returning(ChatSession.status).execution_options(synchronize_session=False)
    return (await db.execute(query)).scalar_one_or_none()


async def set_status(db: AsyncSession, session_id: str, status: str) -> None:
    await db.execute(update(ChatSession).where(ChatSession.id == session_id).values(status=status))


async def statistics(db: AsyncSession, *, active_within: timedelta) -> dict[str, int]:
    since = utcnow() - active_within
    sessions = (
        await db.execute(
            select(
                func.count(ChatSession.id),
                func.count(ChatSession.id).filter(ChatSession.last_activity_at >= since),
            )
        )
    ).one()
    messages = (
        await db.execute(
            select(
                func.count(Message.id),
                func.count(Message.id).filter(Message.feedback == "like"),
                func.count(Message.id).filter(Message.feedback == "dislike"),
            )
        )
    ).one()
    return {
        "total_sessions": sessions[0],
        "active_sessions": sessions[1],
        "total_messages": messages[0],
        "feedback_likes": messages[1],
        "feedback_dislikes": messages[2],
    }


async def delete_one(db: AsyncSession, session_id: str) -> None:
    await db.execute(delete(ChatSession).where(ChatSession.id == session_id))
