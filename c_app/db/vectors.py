"""Queries for stored memory embeddings (optional dense retrieval)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Memory, MemoryVector, utcnow


@dataclass(slots=True)
class StoredVector:
    memory_id: int
    model: str
    text_hash: str
    vector: bytes


async def for_scope(
    db: AsyncSession, *, scope: str, owner_id: str, after_id: int, limit: int
) -> list[tuple[Memory, StoredVector | None]]:
    """One batch of an owner's memories in id order, each with its stored vector if any."""
    query = (
        select(Memory, MemoryVector.model, MemoryVector.text_hash, MemoryVector.vector)
        .outerjoin(MemoryVector, MemoryVector.memory_id == Memory.id)
        .where(Memory.scope == scope, Memory.owner_id == owner_id, Memory.id > after_id)
        .order_by(Memory.id)
        .limit(limit)
    )
    out: list[tuple[Memory, StoredVector | None]] = []
    for memory, model, text_hash, vector in (await db.execute(query)).all():
        stored = StoredVector(memory.id, model, text_hash, vector) if vector is not None else None
        out.append((memory, stored))
    return out


async def get_many(db: AsyncSession, memory_ids: Sequence[int]) -> dict[int, StoredVector]:
    if not memory_ids:
        return {}
    query = select(MemoryVector).where(MemoryVector.memory_id.in_(list(memory_ids)))
    return {
        row.memory_id: StoredVector(row.memory_id, row.model, row.text_hash, row.vector)
        for row in (await db.execute(query)).scalars()
    }


async def put_many(db: AsyncSession, vectors: Sequence[StoredVector], dims: int) -> int:
    """Replace the vectors of these memories (those still existing); returns how many were written."""
    if not vectors:
        return 0
    ids = [v.memory_id for v in vectors]
    await db.execute(delete(MemoryVector).where(MemoryVector.memory_id.in_(ids)))
    # An entry deleted meanwhile keeps no vector (the foreign key would refuse it anyway).
    alive = set((await db.execute(select(Memory.id).where(Memory.id.in_(ids)))).scalars())
    now = utcnow()
    rows = [
        {
            "memory_id": v.memory_id,
            "model": v.model,
            "text_hash": v.text_hash,
            "dims": dims,
            "vector": v.vector,
            "updated_at": now,
        }
        for v in vectors
        if v.memory_id in alive
    ]
    if rows:
        await db.execute(insert(MemoryVector), rows)
    return len(rows)
