"""Queries for human agents (issue 10): presence, hand-offs, notes, the live event log, stop flags.

The races are settled here, in the database, so they hold across replicas on SQLite and PostgreSQL:
a claim, an assignment and a transfer are conditional UPDATEs (`WHERE status = 'queued'`, `WHERE
agent_id = :me`), and whoever's UPDATE touched the row won; a session has at most one open hand-off
(the unique `open_session`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Agent, ChatSession, Handoff, HandoffNote, LiveEvent, Message, StopRequest, utcnow

QUEUED, ASSIGNED, CLOSED = "queued", "assigned", "closed"
OPEN = (QUEUED, ASSIGNED)


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


# -- presence ---------------------------------------------------------------------------------


async def get_agent(db: AsyncSession, agent_id: str) -> Agent | None:
    return await db.get(Agent, agent_id)


async def upsert_agent(
    db: AsyncSession,
    agent_id: str,
    *,
    name: str,
    role: str,
    status: str | None,
    max_concurrent: int | None,
    default_max: int,
    at: datetime,
) -> Agent:
    """Create or refresh an agent's row (a sign of life: last_seen_at = at)."""
    locking = db.get_bind().dialect.name == "postgresql"
    row = await db.get(Agent, agent_id, with_for_update=locking)
    if row is None:
        fresh = Agent(
            id=agent_id,
            name=name,
            role=role,
            status=status or "offline",
            max_concurrent=max_concurrent or default_max,
            last_seen_at=at,
            updated_at=at,
        )
        try:
            async with db.begin_nested():  # the agent's first two requests at once: one inserts
                db.add(fresh)
                await db.flush()
            return fresh
        except IntegrityError:
            row = await db.get(Agent, agent_id, with_for_update=locking, populate_existing=True)
            if row is None:
                raise
    row.name = name
    row.role = role
    if status is not None:
        row.status = status
    if max_concurrent is not None:
        row.max_concurrent = max_concurrent
    row.last_seen_at = at
    row.updated_at = at
    await db.flush()
    return row


async def touch_agent(db: AsyncSession, agent_id: str, at: datetime) -> None:
    await db.execute(update(Agent).where(Agent.id == agent_id).values(last_seen_at=at))


async def list_agents(db: AsyncSession) -> list[Agent]:
    return list((await db.execute(select(Agent).order_by(Agent.id))).scalars())


async def active_counts(db: AsyncSession, agent_ids: Sequence[str] | None = None) -> dict[str, int]:
    """How many sessions each agent holds now."""
    query = (
        select(Handoff.agent_id, func.count(Handoff.id))
        .where(Handoff.status == ASSIGNED)
        .group_by(Handoff.agent_id)
    )
    if agent_ids is not None:
        query = query.where(Handoff.agent_id.in_(list(agent_ids)))
    return {agent_id: count for agent_id, count in (await db.execute(query)).all() if agent_id}


async def online_agents(db: AsyncSession, *, seen_since: datetime) -> list[Agent]:
    query = select(Agent).where(Agent.status == "online", Agent.last_seen_at >= seen_since)
    return list((await db.execute(query.order_by(Agent.id))).scalars())


# -- hand-offs --------------------------------------------------------------------------------


async def open_handoff(db: AsyncSession, session_id: str) -> Handoff | None:
    query = select(Handoff).where(Handoff.open_session == session_id)
    return (await db.execute(query)).scalar_one_or_none()


async def latest_handoff(db: AsyncSession, session_id: str) -> Handoff | None:
    query = select(Handoff).where(Handoff.session_id == session_id).order_by(Handoff.id.desc()).limit(1)
    return (await db.execute(query)).scalar_one_or_none()


async def get_handoff(db: AsyncSession, handoff_id: int) -> Handoff | None:
    return await db.get(Handoff, handoff_id, populate_existing=True)


async def add_handoff(
    db: AsyncSession,
    *,
    session_id: str,
    user_id: str,
    reason: str,
    last_question: str,
    sources: list[dict[str, Any]] | None,
    at: datetime,
) -> Handoff:
    row = Handoff(
        session_id=session_id,
        open_session=session_id,
        user_id=user_id,
        reason=reason,
        status=QUEUED,
        last_question=last_question,
        sources=sources,
        created_at=at,
    )
    db.add(row)
    await db.flush()
    return row


async def queue(db: AsyncSession, *, limit: int = 200) -> list[Handoff]:
    query = select(Handoff).where(Handoff.status == QUEUED).order_by(Handoff.created_at, Handoff.id)
    return list((await db.execute(query.limit(limit))).scalars())


async def queue_position(db: AsyncSession, row: Handoff) -> int:
    """1 for the next in line."""
    query = select(func.count(Handoff.id)).where(
        Handoff.status == QUEUED,
        (Handoff.created_at < row.created_at)
        | ((Handoff.created_at == row.created_at) & (Handoff.id < row.id)),
    )
    return int((await db.execute(query)).scalar_one()) + 1


async def queue_length(db: AsyncSession) -> int:
    return int(
        (await db.execute(select(func.count(Handoff.id)).where(Handoff.status == QUEUED))).scalar_one()
    )


async def held_by(db: AsyncSession, agent_id: str) -> list[Handoff]:
    query = select(Handoff).where(Handoff.status == ASSIGNED, Handoff.agent_id == agent_id)
    return list((await db.execute(query.order_by(Handoff.assigned_at, Handoff.id))).scalars())


async def claim(db: AsyncSession, handoff_id: int, agent_id: str, at: datetime) -> bool:
    """Assign a queued hand-off; True for the one caller whose UPDATE found it still queued."""
    result = await db.execute(
        update(Handoff)
        .where(Handoff.id == handoff_id, Handoff.status == QUEUED)
        .values(status=ASSIGNED, agent_id=agent_id, assigned_at=at)
    )
    return _rowcount(result) == 1


async def transfer(db: AsyncSession, handoff_id: int, *, from_agent: str, to_agent: str) -> bool:
    result = await db.execute(
        update(Handoff)
        .where(Handoff.id == handoff_id, Handoff.status == ASSIGNED, Handoff.agent_id == from_agent)
        .values(agent_id=to_agent)
    )
    return _rowcount(result) == 1


async def close(db: AsyncSession, handoff_id: int, *, agent_id: str | None, at: datetime) -> bool:
    """Close an open hand-off (held by `agent_id`, or any when None)."""
    query = update(Handoff).where(Handoff.id == handoff_id, Handoff.status.in_(OPEN))
    if agent_id is not None:
        query = query.where(Handoff.agent_id == agent_id)
    result = await db.execute(query.values(status=CLOSED, closed_at=at, open_session=None))
    return _rowcount(result) == 1


async def rate(db: AsyncSession, handoff_id: int, *, score: int, comment: str | None, at: datetime) -> bool:
    result = await db.execute(
        update(Handoff)
        .where(Handoff.id == handoff_id, Handoff.status == CLOSED, Handoff.rated_at.is_(None))
        .values(rating=score, rating_comment=comment, rated_at=at)
    )
    return _rowcount(result) == 1


async def set_session_status(db: AsyncSession, session_id: str, status: str) -> None:
    await db.execute(update(ChatSession).where(ChatSession.id == session_id).values(status=status))


async def session_status(db: AsyncSession, session_id: str) -> str | None:
    query = select(ChatSession.status).where(ChatSession.id == session_id)
    return (await db.execute(query)).scalar_one_or_none()


async def last_dislikes(db: AsyncSession, session_id: str, *, count: int) -> bool:
    """Whether the session's last `count` answers were all rated 👎."""
    query = (
        select(Message.feedback)
        .where(Message.session_id == session_id, Message.role == "assistant")
        .order_by(Message.id.desc())
        .limit(count)
    )
    ratings = list((await db.execute(query)).scalars())
    return len(ratings) == count and all(rating == "dislike" for rating in ratings)


async def conversation(db: AsyncSession, session_id: str, *, limit: int) -> list[Message]:
    query = select(Message).where(Message.session_id == session_id).order_by(Message.id.desc()).limit(limit)
    rows = list((await db.execute(query)).scalars())
    rows.reverse()
    return rows


async def last_sources(db: AsyncSession, session_id: str) -> list[dict[str, Any]] | None:
    query = (
        select(Message.sources)
        .where(Message.session_id == session_id, Message.role == "assistant", Message.sources.is_not(None))
        .order_by(Message.id.desc())
        .limit(1)
    )
    return (await db.execute(query)).scalar_one_or_none()


# -- notes ------------------------------------------------------------------------------------


async def add_note(
    db: AsyncSession, *, handoff: Handoff, agent_id: str, agent_name: str, content: str, at: datetime
) -> HandoffNote:
    row = HandoffNote(
        handoff_id=handoff.id,
        session_id=handoff.session_id,
        agent_id=agent_id,
        agent_name=agent_name,
        content=content,
        created_at=at,
    )
    db.add(row)
    await db.flush()
    return row


async def notes(db: AsyncSession, handoff_id: int) -> list[HandoffNote]:
    query = select(HandoffNote).where(HandoffNote.handoff_id == handoff_id).order_by(HandoffNote.id)
    return list((await db.execute(query)).scalars())


# -- figures ----------------------------------------------------------------------------------


async def finished_since(db: AsyncSession, since: datetime, *, limit: int = 1000) -> list[Handoff]:
    """Hand-offs assigned since `since` (for waiting times) - newest first."""
    query = (
        select(Handoff)
        .where(Handoff.assigned_at.is_not(None), Handoff.assigned_at >= since)
        .order_by(Handoff.assigned_at.desc())
        .limit(limit)
    )
    return list((await db.execute(query)).scalars())


async def totals(db: AsyncSession) -> dict[str, Any]:
    row = (
        await db.execute(
            select(
                func.count(Handoff.id),
                func.count(Handoff.id).filter(Handoff.status == QUEUED),
                func.avg(Handoff.rating),
                func.count(Handoff.rating),
            )
        )
    ).one()
    return {
        "handoffs": int(row[0]),
        "queue_length": int(row[1]),
        "csat_average": round(float(row[2]), 2) if row[2] is not None else None,
        "csat_count": int(row[3]),
    }


# -- live events (Last-Event-ID resume) and stop flags ----------------------------------------


async def add_event(
    db: AsyncSession, *, channel: str, type: str, payload: dict[str, Any], at: datetime
) -> LiveEvent:
    about = payload.get("session_id")
    row = LiveEvent(
        channel=channel,
        session_id=about if isinstance(about, str) else None,
        type=type,
        payload=payload,
        created_at=at,
    )
    db.add(row)
    await db.flush()
    return row


async def events_after(
    db: AsyncSession, channels: Sequence[str], after: int, *, limit: int = 500
) -> list[LiveEvent]:
    query = (
        select(LiveEvent)
        .where(LiveEvent.channel.in_(list(channels)), LiveEvent.id > after)
        .order_by(LiveEvent.id)
        .limit(limit)
    )
    return list((await db.execute(query)).scalars())


async def last_event_id(db: AsyncSession) -> int:
    return int((await db.execute(select(func.coalesce(func.max(LiveEvent.id), 0)))).scalar_one())


async def prune_events(db: AsyncSession, before: datetime) -> int:
    return _rowcount(await db.execute(delete(LiveEvent).where(LiveEvent.created_at < before)))


async def delete_events(db: AsyncSession, channel: str) -> int:
    return _rowcount(await db.execute(delete(LiveEvent).where(LiveEvent.channel == channel)))


async def delete_session_events(db: AsyncSession, session_ids: Sequence[str]) -> int:
    """The live events about these sessions (a customer's erasure: they carry message text)."""
    if not session_ids:
        return 0
    return _rowcount(await db.execute(delete(LiveEvent).where(LiveEvent.session_id.in_(list(session_ids)))))


async def request_stop(db: AsyncSession, session_id: str, at: datetime) -> None:
    row = await db.get(StopRequest, session_id)
    if row is None:
        db.add(StopRequest(session_id=session_id, requested_at=at))
    else:
        row.requested_at = at
    await db.flush()


async def stop_requested(db: AsyncSession, session_id: str, since: datetime) -> bool:
    query = select(StopRequest.session_id).where(
        StopRequest.session_id == session_id, StopRequest.requested_at >= since
    )
    return (await db.execute(query)).scalar_one_or_none() is not None


__all__ = ["utcnow"]
