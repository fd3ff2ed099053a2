"""Queries for tickets (留言): the session's open one, the agents' list (open first), closing, and a
customer's tickets for export and erasure."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Ticket

OPEN = "open"
CLOSED = "closed"


async def open_for_session(db: AsyncSession, session_id: str, user_id: str) -> Ticket | None:
    query = (
        select(Ticket)
        .where(Ticket.session_id == session_id, Ticket.user_id == user_id, Ticket.status == OPEN)
        .order_by(Ticket.id.desc())
        .limit(1)
        .with_for_update()
    )
    return (await db.execute(query)).scalar_one_or_none()


async def add(
    db: AsyncSession,
    *,
    user_id: str,
    session_id: str,
    content: str,
    phone: str | None,
    email: str | None,
    at: datetime,
) -> Ticket:
    row = Ticket(
        user_id=user_id,
        session_id=session_id,
        content=content,
        phone=phone,
        email=email,
        status=OPEN,
        created_at=at,
        updated_at=at,
    )
    db.add(row)
    await db.flush()
    return row


async def get(db: AsyncSession, ticket_id: int) -> Ticket | None:
    return await db.get(Ticket, ticket_id)


async def page(db: AsyncSession, *, status: str | None, limit: int, offset: int) -> tuple[list[Ticket], int]:
    """Open tickets first, oldest first (answered in turn); then closed ones, newest first."""
    where = [Ticket.status == status] if status else []
    total = (await db.execute(select(func.count()).select_from(Ticket).where(*where))).scalar_one()
    is_open = Ticket.status == OPEN
    query = (
        select(Ticket)
        .where(*where)
        .order_by(case((is_open, 0), else_=1), case((is_open, Ticket.id), else_=-Ticket.id))
        .limit(limit)
        .offset(offset)
    )
    return list((await db.execute(query)).scalars()), int(total)


async def count_open(db: AsyncSession) -> int:
    query = select(func.count()).select_from(Ticket).where(Ticket.status == OPEN)
    return int((await db.execute(query)).scalar_one())


async def close(db: AsyncSession, ticket_id: int, *, by: str, at: datetime) -> bool:
    """Close an open ticket; False when it is unknown or closed already (one closer wins a race)."""
    result = await db.execute(
        update(Ticket)
        .where(Ticket.id == ticket_id, Ticket.status == OPEN)
        .values(status=CLOSED, closed_at=at, closed_by=by, updated_at=at)
    )
    return bool(getattr(result, "rowcount", 0))


async def for_user(db: AsyncSession, user_id: str, *, after: int, limit: int) -> list[Ticket]:
    query = (
        select(Ticket).where(Ticket.user_id == user_id, Ticket.id > after).order_by(Ticket.id).limit(limit)
    )
    return list((await db.execute(query)).scalars())


async def stale_ids(db: AsyncSession, cutoff: datetime, *, limit: int) -> list[int]:
    """Tickets last written before the cut-off (retention), oldest id first."""
    query = select(Ticket.id).where(Ticket.updated_at < cutoff).order_by(Ticket.id).limit(limit)
    return list((await db.execute(query)).scalars())


async def delete_stale(db: AsyncSession, ids: list[int], cutoff: datetime) -> int:
    """Delete these tickets if still untouched since before the cut-off (a customer may have written)."""
    if not ids:
        return 0
    result = await db.execute(
        delete(Ticket)
        .where(Ticket.id.in_(ids), Ticket.updated_at < cutoff)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_for_user(db: AsyncSession, user_id: str) -> int:
    result = await db.execute(delete(Ticket).where(Ticket.user_id == user_id))
    return int(getattr(result, "rowcount", 0))
