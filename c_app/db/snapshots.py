"""Saved search indexes (`index_snapshots`): read at start by every replica, written by one at a time.

The writer's lease is a compare-and-set on the snapshot's own row, the pattern of
`retention.LeaseLock`: `claim` takes it (free, lapsed, or this holder's) only when the stored
snapshot is older than the one on offer, so replicas that reach the same point do not all
serialise the index; `store` writes the snapshot and frees the lease in one UPDATE that holds only
while the lease still names the holder, so a writer that stalled past its lease writes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from .models import IndexSnapshot, utcnow


def _stamp(moment: datetime) -> str:
    """A fixed-width UTC time whose text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def get(db: AsyncSession, name: str) -> IndexSnapshot | None:
    """The snapshot with its data."""
    query = select(IndexSnapshot).where(IndexSnapshot.name == name).options(undefer(IndexSnapshot.data))
    return (await db.execute(query)).scalar_one_or_none()


async def stored_seq(db: AsyncSession, name: str) -> int | None:
    """The change-log sequence number the stored snapshot covers (None: there is none)."""
    return (
        await db.execute(select(IndexSnapshot.seq).where(IndexSnapshot.name == name))
    ).scalar_one_or_none()


async def claim(
    db: AsyncSession, name: str, *, holder: str, seq: int, min_gain: int | None, ttl: timedelta
) -> bool:
    """Take the writer's lease if the stored snapshot covers at most `seq - min_gain` changes
    (min_gain None: whatever it covers, to replace one found unusable)."""
    now = utcnow()
    mine = f"{_stamp(now + ttl)} {holder}"
    result = await db.execute(
        update(IndexSnapshot)
        .where(
            IndexSnapshot.name == name,
            or_(
                IndexSnapshot.lease < _stamp(now), IndexSnapshot.lease.endswith(f" {holder}", autoescape=True)
            ),
            true()
            if min_gain is None
            else or_(IndexSnapshot.seq <= seq - min_gain, IndexSnapshot.data.is_(None)),
        )
        .values(lease=mine)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) == 1:
        return True
    if await stored_seq(db, name) is not None:
        return False
    try:  # the first snapshot ever: the row is created taken (of two at once, one insert fails)
        async with db.begin_nested():
            db.add(
                IndexSnapshot(name=name, version=0, seq=0, entries=0, checksum="", lease=mine, created_at=now)
            )
    except IntegrityError:
        return False
    return True


async def store(
    db: AsyncSession,
    name: str,
    *,
    holder: str,
    version: int,
    seq: int,
    entries: int,
    checksum: str,
    data: bytes,
) -> bool:
    """Write the snapshot and free the lease, if the lease is still this holder's."""
    result = await db.execute(
        update(IndexSnapshot)
        .where(IndexSnapshot.name == name, IndexSnapshot.lease.endswith(f" {holder}", autoescape=True))
        .values(
            version=version,
            seq=seq,
            entries=entries,
            checksum=checksum,
            data=data,
            lease="",
            created_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


async def release(db: AsyncSession, name: str, *, holder: str) -> None:
    await db.execute(
        update(IndexSnapshot)
        .where(IndexSnapshot.name == name, IndexSnapshot.lease.endswith(f" {holder}", autoescape=True))
        .values(lease="")
        .execution_options(synchronize_session=False)
    )
