"""Queries for background jobs (the rows a client polls; the engine's own tables are procrastinate's)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import BackgroundJob, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"


async def add(db: AsyncSession, row: BackgroundJob) -> BackgroundJob:
    db.add(row)
    await db.flush()
    return row


async def get(db: AsyncSession, job_id: str) -> BackgroundJob | None:
    return await db.get(BackgroundJob, job_id)


async def start(db: AsyncSession, job_id: str) -> BackgroundJob | None:
    """Mark the job running (another attempt) and return it; None: unknown, or finished already."""
    row = (
        await db.execute(
            select(BackgroundJob)
            .where(BackgroundJob.id == job_id, BackgroundJob.status.in_((QUEUED, RUNNING)))
            .with_for_update()
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    row.status = RUNNING
    row.attempts += 1
    row.started_at = utcnow()
    await db.flush()
    return row


async def finish(
    db: AsyncSession, job_id: str, *, status: str, result: dict[str, Any] | None, error: str | None
) -> None:
    await db.execute(
        update(BackgroundJob)
        .where(BackgroundJob.id == job_id)
        .values(status=status, result=result, error=error, payload=None, finished_at=utcnow())
    )


async def unfinished_ids(db: AsyncSession, *, before: datetime | None = None) -> list[str]:
    query = select(BackgroundJob.id).where(BackgroundJob.status.in_((QUEUED, RUNNING)))
    if before is not None:
        query = query.where(BackgroundJob.created_at <= before)
    return list((await db.execute(query.order_by(BackgroundJob.created_at))).scalars())
