"""Queries for memories and their change log.

Every write appends to `memory_changes` in the same transaction, so each process can bring its
in-memory search index up to date by reading the log past the last sequence number it applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, inspect, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Memory, MemoryChange, utcnow

PUBLIC = "public"
PRIVATE = "private"
CHAT = "chat"
SCOPES = (PRIVATE, CHAT, PUBLIC)


OWN_CHANGES = "c_app.own_changes"


def _log(db: AsyncSession, memory: Memory) -> None:
    change = MemoryChange(
        memory_id=memory.id, scope=memory.scope, owner_id=memory.owner_id, created_at=utcnow()
    )
    db.add(change)
    _remember(db, change)


def _remember(db: AsyncSession, *changes: MemoryChange | int) -> None:
    """Note this transaction's change-log entries (objects get their seq at flush) in `db.info`,
    so the writer can skip them when it reads the log back (see `own_change_seqs`)."""
    db.info.setdefault(OWN_CHANGES, []).extend(changes)


def own_change_seqs(db: AsyncSession) -> list[int]:
    """Sequence numbers of the change-log entries written in this (committed) session."""
    return [c if isinstance(c, int) else c.seq for c in db.info.get(OWN_CHANGES, ())]


async def add(
    db: AsyncSession,
    *,
    scope: str,
    owner_id: str,
    content: str,
    title: str = "",
    category: str = "",
    question: str = "",
    similar_questions: list[str] | None = None,
    external_id: str | None = None,
    meta: dict[str, Any] | None = None,
    tokens: bytes | None = None,
) -> Memory:
    now = utcnow()
    row = Memory(
        tokens=tokens,
        scope=scope,
        owner_id=owner_id,
        external_id=external_id,
        title=title,
        category=category,
        question=question,
        similar_questions=similar_questions or [],
        content=content,
        meta=meta or {},
        created_at=now,
        updated_at=now,
    )
    db.add(row)
    await db.flush()
    _log(db, row)
    return row


def _stale_terms(memory: Memory) -> None:
    """Clear the stored terms of a changed row unless new ones were set with the change (they may
    describe the old text; the next search analyses it again)."""
    if not inspect(memory).attrs.tokens.history.added:
        memory.tokens = None


async def touch(db: AsyncSession, memory: Memory) -> None:
    """Record that an existing row was changed (call after mutating it)."""
    _stale_terms(memory)
    memory.updated_at = utcnow()
    await db.flush()
    _log(db, memory)


async def remove(db: AsyncSession, memory: Memory) -> None:
    ref = MemoryChange(memory_id=memory.id, scope=memory.scope, owner_id=memory.owner_id, created_at=utcnow())
    await db.delete(memory)
    db.add(ref)
    await db.flush()
    _remember(db, ref)


async def get(db: AsyncSession, memory_id: int, *, scope: str, owner_id: str) -> Memory | None:
    query = select(Memory).where(Memory.id == memory_id, Memory.scope == scope, Memory.owner_id == owner_id)
    return (await db.execute(query)).scalar_one_or_none()


async def get_many(db: AsyncSession, ids: Sequence[int]) -> dict[int, Memory]:
    if not ids:
        return {}
    rows = (await db.execute(select(Memory).where(Memory.id.in_(list(ids))))).scalars()
    return {row.id: row for row in rows}


async def list_for_owner(
    db: AsyncSession, *, scope: str, owner_id: str, after_id: int = 0, limit: int | None = None
) -> list[Memory]:
    query = (
        select(Memory)
        .where(Memory.scope == scope, Memory.owner_id == owner_id, Memory.id > after_id)
        .order_by(Memory.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return list((await db.execute(query)).scalars())


async def ranking_rows(db: AsyncSession, *, scopes: Sequence[str], owner_id: str) -> list[Any]:
    """One owner's memories of some scopes as what ranking reads: id, scope and stored terms, in id order."""
    query = (
        select(Memory.id, Memory.scope, Memory.tokens)
        .where(Memory.scope.in_(list(scopes)), Memory.owner_id == owner_id)
        .order_by(Memory.id)
    )
    return list((await db.execute(query)).all())


async def store_tokens(db: AsyncSession, tokens: dict[int, bytes]) -> None:
    """Save rows' analysed terms (not a change of the memory: nothing is logged)."""
    for memory_id, value in tokens.items():
        await db.execute(
            update(Memory)
            .where(Memory.id == memory_id)
            .values(tokens=value)
            .execution_options(synchronize_session=False)
        )


async def first_change(db: AsyncSession) -> int | None:
    """The oldest sequence number still in the change log (None: the log is empty)."""
    return (await db.execute(select(func.min(MemoryChange.seq)))).scalar_one()


async def trim(db: AsyncSession, *, scope: str, owner_id: str, keep: int) -> list[Memory]:
    """Delete all but the newest `keep` items of one owner's scope; returns the deleted rows."""
    stale = list(
        (
            await db.execute(
                select(Memory)
                .where(Memory.scope == scope, Memory.owner_id == owner_id)
                .order_by(Memory.id.desc())
                .offset(keep)
            )
        ).scalars()
    )
    for row in stale:
        await remove(db, row)
    return stale


async def by_external_ids(
    db: AsyncSession, ext_ids: Sequence[str], *, scope: str, owner_id: str
) -> dict[str, Memory]:
    found: dict[str, Memory] = {}
    for start in range(0, len(ext_ids), 500):
        chunk = list(ext_ids[start : start + 500])
        query = select(Memory).where(
            Memory.scope == scope, Memory.owner_id == owner_id, Memory.external_id.in_(chunk)
        )
        found.update({r.external_id: r for r in (await db.execute(query)).scalars() if r.external_id})
    return found


async def changes_since(
    db: AsyncSession, seq: int, *, also: Sequence[int] = (), limit: int = 5000
) -> list[MemoryChange]:
    """Changes after `seq`, plus the listed earlier ones (gaps a slower transaction may since have filled)."""
    condition = MemoryChange.seq > seq
    if also:
        condition = or_(condition, MemoryChange.seq.in_(list(also)))
    query = select(MemoryChange).where(condition).order_by(MemoryChange.seq).limit(limit)
    return list((await db.execute(query)).scalars())


async def last_change(db: AsyncSession) -> int:
    return (await db.execute(select(func.coalesce(func.max(MemoryChange.seq), 0)))).scalar_one()


async def count(db: AsyncSession, *, scope: str | None = None) -> int:
    query = select(func.count(Memory.id))
    if scope is not None:
        query = query.where(Memory.scope == scope)
    return (await db.execute(query)).scalar_one()


# -- knowledge-base management (bulk writes, paged listing, export) ------------------------------


async def add_many(
    db: AsyncSession, rows: Sequence[dict[str, Any]], *, scope: str, owner_id: str
) -> list[Memory]:
    """Insert many rows with batched INSERTs (ORM bulk insert), their change records likewise."""
    if not rows:
        return []
    now = utcnow()
    values = [
        {
            "scope": scope,
            "owner_id": owner_id,
            "external_id": fields.get("external_id"),
            "title": fields.get("title", ""),
            "category": fields.get("category", ""),
            "question": fields.get("question", ""),
            "similar_questions": list(fields.get("similar_questions") or []),
            "content": fields["content"],
            "meta": dict(fields.get("meta") or {}),
            "created_at": now,
            "updated_at": now,
        }
        for fields in rows
    ]
    # Unordered RETURNING: the returned rows describe themselves, and ordered batches need a sentinel column.
    statement = insert(Memory).returning(Memory)
    memories = list((await db.scalars(statement, values)).all())
    changes = [{"memory_id": m.id, "scope": scope, "owner_id": owner_id, "created_at": now} for m in memories]
    _remember(db, *(await db.scalars(insert(MemoryChange).returning(MemoryChange.seq), changes)).all())
    return memories


async def touch_many(db: AsyncSession, memories: Sequence[Memory]) -> None:
    """Record that existing rows were changed (call after mutating them)."""
    if not memories:
        return
    now = utcnow()
    for memory in memories:
        _stale_terms(memory)
        memory.updated_at = now
    await db.flush()
    changes = [
        {"memory_id": m.id, "scope": m.scope, "owner_id": m.owner_id, "created_at": now} for m in memories
    ]
    _remember(db, *(await db.scalars(insert(MemoryChange).returning(MemoryChange.seq), changes)).all())


def _filtered(query: Any, *, scope: str, owner_id: str, category: str | None, text: str | None) -> Any:
    query = query.where(Memory.scope == scope, Memory.owner_id == owner_id)
    if category is not None:
        query = query.where(Memory.category == category)
    if text:
        # lower() + LIKE with escaped wildcards reads the same on SQLite and PostgreSQL.
        needle = text.lower()
        query = query.where(
            or_(
                func.lower(Memory.title).contains(needle, autoescape=True),
                func.lower(Memory.question).contains(needle, autoescape=True),
                func.lower(Memory.content).contains(needle, autoescape=True),
            )
        )
    return query


async def page(
    db: AsyncSession,
    *,
    scope: str,
    owner_id: str,
    offset: int,
    limit: int,
    category: str | None = None,
    text: str | None = None,
    newest_first: bool = False,
) -> tuple[list[Memory], int]:
    """One page of an owner's scope (optionally filtered) and the total matching count."""

    def filtered(query: Any) -> Any:
        return _filtered(query, scope=scope, owner_id=owner_id, category=category, text=text)

    total: int = (await db.execute(filtered(select(func.count(Memory.id))))).scalar_one()
    order = Memory.id.desc() if newest_first else Memory.id
    query = filtered(select(Memory)).order_by(order).offset(offset).limit(limit)
    return list((await db.execute(query)).scalars()), total


async def with_external_prefix(db: AsyncSession, prefix: str, *, scope: str, owner_id: str) -> list[Memory]:
    query = select(Memory).where(
        Memory.scope == scope,
        Memory.owner_id == owner_id,
        Memory.external_id.startswith(prefix, autoescape=True),
    )
    return list((await db.execute(query)).scalars())
