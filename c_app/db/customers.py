"""Everything stored about one customer, read in batches (export) and removed in bulk (erasure).

A customer is a user id: their chat sessions and messages, their private and chat memories, their
uploads and the sensitive-word events of their messages. Reads are keyset pages (one short read per
batch, so a customer with many rows never sits in memory at once); the deletes run inside the
caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import ScalarSelect

from .memories import OWN_CHANGES
from .models import ChatSession, Memory, MemoryChange, MemoryVector, Message, ModerationEvent, Upload, utcnow

_IN_CHUNK = 500  # ids per IN (...) list


def _sessions_of(user_id: str) -> ScalarSelect[str]:
    return select(ChatSession.id).where(ChatSession.user_id == user_id).scalar_subquery()


def _messages_of(user_id: str) -> ColumnElement[bool]:
    # Their own messages, and every message in their sessions (the answers they were given).
    return or_(Message.user_id == user_id, Message.session_id.in_(_sessions_of(user_id)))


# -- reads (export) ------------------------------------------------------------------------------


async def sessions_page(
    db: AsyncSession, user_id: str, *, after: str | None, limit: int
) -> list[ChatSession]:
    query = select(ChatSession).where(ChatSession.user_id == user_id)
    if after is not None:
        query = query.where(ChatSession.id > after)
    return list((await db.execute(query.order_by(ChatSession.id).limit(limit))).scalars())


async def messages_page(db: AsyncSession, user_id: str, *, after: int, limit: int) -> list[Message]:
    query = select(Message).where(_messages_of(user_id), Message.id > after).order_by(Message.id).limit(limit)
    return list((await db.execute(query)).scalars())


async def uploads_page(db: AsyncSession, user_id: str, *, after: str | None, limit: int) -> list[Upload]:
    query = select(Upload).where(Upload.user_id == user_id)
    if after is not None:
        query = query.where(Upload.id > after)
    return list((await db.execute(query.order_by(Upload.id).limit(limit))).scalars())


async def moderation_page(db: AsyncSession, user_id: str, *, after: int, limit: int) -> list[ModerationEvent]:
    query = (
        select(ModerationEvent)
        .where(ModerationEvent.user_id == user_id, ModerationEvent.id > after)
        .order_by(ModerationEvent.id)
        .limit(limit)
    )
    return list((await db.execute(query)).scalars())


# -- deletes (erasure), in the caller's transaction ----------------------------------------------


async def lock_sessions(db: AsyncSession, user_id: str) -> list[str]:
    """Lock the customer's sessions (PostgreSQL: FOR UPDATE) before anything is deleted: a message
    being stored into one of them either commits first (and is deleted below) or waits and fails."""
    query = select(ChatSession.id).where(ChatSession.user_id == user_id).with_for_update()
    return list((await db.execute(query)).scalars())


async def delete_messages(db: AsyncSession, user_id: str) -> int:
    result = await db.execute(
        delete(Message).where(_messages_of(user_id)).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_sessions(db: AsyncSession, user_id: str) -> int:
    result = await db.execute(
        delete(ChatSession).where(ChatSession.user_id == user_id).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def memory_refs(db: AsyncSession, owner_id: str, scopes: Sequence[str]) -> list[Memory]:
    """The owner's memories of these scopes as light references (id, scope, owner; no content)."""
    query = (
        select(Memory.id, Memory.scope, Memory.owner_id, Memory.meta)
        .where(Memory.owner_id == owner_id, Memory.scope.in_(list(scopes)))
        .order_by(Memory.id)
    )
    return [
        Memory(id=row.id, scope=row.scope, owner_id=row.owner_id, meta=row.meta)
        for row in (await db.execute(query)).all()
    ]


async def delete_memories(db: AsyncSession, refs: Sequence[Memory]) -> None:
    """Delete these memories (their vectors too, whatever the foreign-key settings) and log each
    removal in `memory_changes`, so every replica drops them from its index."""
    now = utcnow()
    for start in range(0, len(refs), _IN_CHUNK):
        chunk = refs[start : start + _IN_CHUNK]
        ids = [ref.id for ref in chunk]
        await db.execute(
            delete(MemoryVector)
            .where(MemoryVector.memory_id.in_(ids))
            .execution_options(synchronize_session=False)
        )
        await db.execute(
            delete(Memory).where(Memory.id.in_(ids)).execution_options(synchronize_session=False)
        )
        changes = [
            {"memory_id": r.id, "scope": r.scope, "owner_id": r.owner_id, "created_at": now} for r in chunk
        ]
        seqs = (await db.scalars(insert(MemoryChange).returning(MemoryChange.seq), changes)).all()
        # The writer skips its own log entries when it reads the log back (see db.memories).
        db.info.setdefault(OWN_CHANGES, []).extend(seqs)


async def delete_uploads(db: AsyncSession, user_id: str) -> list[str]:
    """Delete the customer's upload rows; returns the stored file names (the files are the caller's)."""
    names = list((await db.execute(select(Upload.stored_name).where(Upload.user_id == user_id))).scalars())
    if names:
        await db.execute(
            delete(Upload).where(Upload.user_id == user_id).execution_options(synchronize_session=False)
        )
    return names


async def delete_moderation_events(db: AsyncSession, user_id: str) -> int:
    result = await db.execute(
        delete(ModerationEvent)
        .where(ModerationEvent.user_id == user_id)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
