"""Queries for sensitive-word events (`moderation_events`): which listed words a message matched,
never the text around them."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import ModerationEvent, utcnow

QUESTION = "question"  # a customer's message, blocked
ANSWER = "answer"  # an answer, masked


async def add(
    db: AsyncSession,
    *,
    user_id: str,
    session_id: str,
    message_id: int | None,
    direction: str,
    hits: int,
    words: list[str],
) -> ModerationEvent:
    row = ModerationEvent(
        user_id=user_id,
        session_id=session_id,
        message_id=message_id,
        direction=direction,
        hits=hits,
        words=words,
        created_at=utcnow(),
    )
    db.add(row)
    await db.flush()
    return row


async def totals(db: AsyncSession) -> dict[str, int]:
    """All hits (questions and answers) and the number of blocked messages, counted in the database."""
    hits, blocked = (
        await db.execute(
            select(
                func.coalesce(func.sum(ModerationEvent.hits), 0),
                func.count(ModerationEvent.id).filter(ModerationEvent.direction == QUESTION),
            )
        )
    ).one()
    return {"sensitive_hits": int(hits), "blocked_messages": int(blocked)}
