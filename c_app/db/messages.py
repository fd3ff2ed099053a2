"""Queries for messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Message, utcnow

_MESSAGES: Table = Message.__table__  # type: ignore[assignment]


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
    outcome: str | None = None,
    entry_id: int | None = None,
    agent_id: str | None = None,
    agent_name: str | None = None,
    score: float | None = None,
    choices: list[int] | None = None,
) -> Message:
    """Insert a message with one Core INSERT (a turn stores two: no ORM unit of work for them);
    returns it as a detached row carrying its new id."""
    values: dict[str, Any] = {
        "session_id": session_id,
        "user_id": user_id,
        "role": role,
        "content": content,
        "parts": parts,
        "status": status,
        "engine": engine,
        "sources": sources,
        "usage": usage,
        "latency_ms": latency_ms,
        "outcome": outcome,
        "entry_id": entry_id,
        "agent_id": agent_id,
        "agent_name": agent_name,
        "score": score,
        "choices": choices,
        "created_at": utcnow(),
    }
    new_id = (await db.execute(insert(_MESSAGES).values(values).returning(_MESSAGES.c.id))).scalar_one()
    return Message(id=new_id, **values)


async def list_recent(
    db: AsyncSession, session_id: str, *, owner_id: str | None, limit: int
) -> list[Message]:
    """The session's last `limit` messages, oldest first."""
    query = select(Message).where(Message.session_id == session_id)
    if owner_id is not None:
        query = query.where(Message.user_id == owner_id)
    rows = list((await db.execute(query.order_by(Message.id.desc()).limit(limit))).scalars())
    rows.reverse()
    return rows


async def page(
    db: AsyncSession,
    session_id: str,
    *,
    limit: int,
    before: int | None = None,
    after: int | None = None,
    newest_first: bool = False,
) -> tuple[list[Message], bool]:
    """One page of a session's messages, and whether more lie beyond it in the direction read.

    `before` reads back from a message (the `limit` nearest older ones), `after` reads forward from
    one; with neither, the page starts at the newest (newest_first) or the oldest message. The rows
    come back in the order asked for. The caller has already checked who owns the session.
    """
    query = select(Message).where(Message.session_id == session_id)
    if before is not None:
        query = query.where(Message.id < before)
    if after is not None:
        query = query.where(Message.id > after)
    reads_backwards = before is not None or (after is None and newest_first)
    query = query.order_by(Message.id.desc() if reads_backwards else Message.id.asc()).limit(limit + 1)
    rows = list((await db.execute(query)).scalars())
    has_more = len(rows) > limit
    rows = rows[:limit]
    if reads_backwards != newest_first:
        rows.reverse()
    return rows, has_more


async def get(db: AsyncSession, message_id: int, *, owner_id: str | None) -> Message | None:
    query = select(Message).where(Message.id == message_id)
    if owner_id is not None:
        query = query.where(Message.user_id == owner_id)
    return (await db.execute(query)).scalar_one_or_none()


async def delete_for_session(db: AsyncSession, session_id: str) -> int:
    """Delete a session's messages; the FK cascade would too, but this holds whatever the PRAGMAs say."""
    result = await db.execute(delete(Message).where(Message.session_id == session_id))
    return int(getattr(result, "rowcount", 0) or 0)


def set_feedback(row: Message, *, rating: str | None, comment: str | None, at: datetime | None) -> None:
    # Cleared feedback leaves no trace: rating, comment and time go together.
    row.feedback = rating
    row.feedback_comment = comment if rating is not None else None
    row.feedback_at = at if rating is not None else None


async def record_choice(db: AsyncSession, message_id: int, entry_id: int) -> None:
    """The customer picked `entry_id` among a clarified answer's choices."""
    await db.execute(update(Message).where(Message.id == message_id).values(chosen_entry_id=entry_id))
