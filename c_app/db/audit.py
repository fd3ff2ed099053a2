"""Queries for the audit log: append, list with filters, and pseudonymise a customer's id.

Nothing here updates or deletes a row except `pseudonymise`, which replaces an erased customer's id
with its pseudonym (the rows themselves, and what they say was done, stay).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import AuditEntry, utcnow

CUSTOMER = "customer"


async def add(
    db: AsyncSession,
    *,
    actor: str,
    actor_role: str,
    action: str,
    target_type: str,
    target_id: str,
    customer_id: str | None,
    address: str,
    request_id: str,
    detail: dict[str, Any],
) -> AuditEntry:
    row = AuditEntry(
        created_at=utcnow(),
        actor=actor,
        actor_role=actor_role,
        action=action,
        target_type=target_type,
        target_id=target_id,
        customer_id=customer_id,
        address=address,
        request_id=request_id,
        detail=detail,
    )
    db.add(row)
    await db.flush()
    return row


async def page(
    db: AsyncSession,
    *,
    offset: int,
    limit: int,
    action: str | None = None,
    customer_ids: Sequence[str] | None = None,
    target_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[AuditEntry], int]:
    """One page of entries, newest first, and how many match in all."""
    conditions: list[Any] = []
    if action is not None:
        conditions.append(AuditEntry.action == action)
    if customer_ids is not None:
        conditions.append(AuditEntry.customer_id.in_(list(customer_ids)))
    if target_type is not None:
        conditions.append(AuditEntry.target_type == target_type)
    if since is not None:
        conditions.append(AuditEntry.created_at >= since)
    if until is not None:
        conditions.append(AuditEntry.created_at <= until)
    where = and_(true(), *conditions)
    total: int = (await db.execute(select(func.count(AuditEntry.id)).where(where))).scalar_one()
    query = select(AuditEntry).where(where).order_by(AuditEntry.id.desc()).offset(offset).limit(limit)
    return list((await db.execute(query)).scalars()), total


async def pseudonymise(db: AsyncSession, customer_id: str, pseudonym: str) -> int:
    """Replace a customer's id with its pseudonym wherever the log names them; returns the rows changed."""
    names_them = AuditEntry.customer_id == customer_id
    targets_them = and_(AuditEntry.target_type == CUSTOMER, AuditEntry.target_id == customer_id)
    result = await db.execute(
        update(AuditEntry)
        .where(or_(names_them, targets_them))
        .values(
            customer_id=case((names_them, pseudonym), else_=AuditEntry.customer_id),
            target_id=case((targets_them, pseudonym), else_=AuditEntry.target_id),
        )
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
