"""The audit log: who read or changed a customer's data or the knowledge base, when, and from where.

    context = AuditContext(actor="admin", role="admin", address="10.0.0.7", request_id="…")
    await audit.record(context, "knowledge.update", target_type="knowledge", target_id="81",
                       detail={"fields": ["answer"]})

Any caller that acts for a person records through `record`: the admin routes today, the agents'
replies, closes and settings later (actor = the agent's id, role "agent" or "supervisor"). Pass
`db` to write the entry in the caller's own transaction (it then commits or rolls back with the
change); without it the entry gets a short transaction of its own, right after the change.

An entry never holds the data itself: ids, counts and flags only. `detail` is held to that here
(numbers, booleans, short lower-case identifiers and lists of them; anything else is dropped and
logged), so a careless caller cannot put a question, an answer or a memory into the log.

Entries are append-only through the API. The one change ever made to them is `pseudonymise`, run
by a customer's erasure: the customer's id becomes a keyed hash (HMAC-SHA256 under a random key kept
in `app_meta`), so the log still proves what was done to "that customer" and an operator who is
given the id can find the entries (`customer_ids_for`), but the log no longer lists the id itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import audit as repo
from ..db import meta
from ..db.engine import Database
from ..db.models import AuditEntry

logger = logging.getLogger(__name__)

PSEUDONYM_KEY = "audit_pseudonym_key"
PSEUDONYM_PREFIX = "erased:"
ROLES = ("admin", "supervisor", "agent", "system")
_IDENTIFIER = re.compile(r"^[a-z0-9_.:-]{0,32}$")
_LIST_MAX = 20


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Who acts and from where: built once per request by the API layer."""

    actor: str  # "admin" (the ADMIN_TOKEN holder), an agent's id, "system"
    role: str  # one of ROLES
    address: str = ""  # the client's address
    request_id: str = ""  # the X-Request-Id of the request


def _allowed(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        return bool(_IDENTIFIER.fullmatch(value))
    if isinstance(value, list | tuple):
        return len(value) <= _LIST_MAX and all(isinstance(v, str) and _IDENTIFIER.fullmatch(v) for v in value)
    return False


def clean_detail(detail: dict[str, Any] | None) -> dict[str, Any]:
    """Counts and flags only: anything that could be content is dropped (and the drop logged)."""
    kept: dict[str, Any] = {}
    for key, value in (detail or {}).items():
        if isinstance(key, str) and _IDENTIFIER.fullmatch(key) and _allowed(value):
            kept[key] = list(value) if isinstance(value, tuple) else value
        else:
            logger.warning("audit detail %r dropped: only counts, flags and identifiers are logged", key)
    return kept


class AuditService:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._key: bytes | None = None

    async def record(
        self,
        context: AuditContext,
        action: str,
        *,
        target_type: str,
        target_id: str | int = "",
        customer_id: str | None = None,
        detail: dict[str, Any] | None = None,
        db: AsyncSession | None = None,
    ) -> AuditEntry:
        """Append one entry (in `db`'s transaction when given, else in one of its own)."""
        if context.role not in ROLES:
            raise ValueError(f"unknown audit role {context.role!r}")
        fields: dict[str, Any] = {
            "actor": context.actor[:200],
            "actor_role": context.role,
            "action": action[:64],
            "target_type": target_type[:32],
            "target_id": str(target_id)[:200],
            "customer_id": customer_id,
            "address": context.address[:64],
            "request_id": context.request_id[:64],
            "detail": clean_detail(detail),
        }
        if db is not None:
            return await repo.add(db, **fields)
        async with self.db.transaction() as session:
            return await repo.add(session, **fields)

    async def list_entries(
        self,
        *,
        page: int,
        page_size: int,
        action: str | None = None,
        customer_id: str | None = None,
        target_type: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[AuditEntry], int]:
        """One page of entries, newest first. A customer id also finds the entries written before
        that customer was erased (they carry the id's pseudonym)."""
        customer_ids = await self.customer_ids_for(customer_id) if customer_id is not None else None
        async with self.db.read() as db:
            return await repo.page(
                db,
                offset=(page - 1) * page_size,
                limit=page_size,
                action=action,
                customer_ids=customer_ids,
                target_type=target_type,
                since=since,
                until=until,
            )

    # -- pseudonyms -------------------------------------------------------------------------------

    async def customer_ids_for(self, customer_id: str) -> list[str]:
        """The values under which the log may name this customer: the id and, once anyone has been
        erased, its pseudonym."""
        key = await self._pseudonym_key(create=False)
        if key is None:
            return [customer_id]
        return [customer_id, self._pseudonym(key, customer_id)]

    async def pseudonym(self, customer_id: str) -> str:
        """The customer's pseudonym (call before opening the erasure's transaction: the key may need
        a write of its own the first time)."""
        key = await self._pseudonym_key(create=True)
        assert key is not None
        return self._pseudonym(key, customer_id)

    async def pseudonymise(self, db: AsyncSession, customer_id: str, pseudonym: str) -> int:
        """In the erasure's transaction: every entry naming the customer names the pseudonym instead."""
        return await repo.pseudonymise(db, customer_id, pseudonym)

    @staticmethod
    def _pseudonym(key: bytes, customer_id: str) -> str:
        digest = hmac.new(key, customer_id.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{PSEUDONYM_PREFIX}{digest[:40]}"

    async def _pseudonym_key(self, *, create: bool) -> bytes | None:
        """The database's pseudonym key (shared by every replica), made on first use."""
        if self._key is not None:
            return self._key
        async with self.db.read() as db:
            stored = await meta.get(db, PSEUDONYM_KEY)
        if stored is None and create:
            try:
                async with self.db.transaction() as db:
                    await meta.put(db, PSEUDONYM_KEY, secrets.token_hex(32))
            except IntegrityError:
                pass  # another replica made it first: use theirs
            async with self.db.read() as db:
                stored = await meta.get(db, PSEUDONYM_KEY)
        if stored is None:
            return None
        self._key = bytes.fromhex(stored)
        return self._key
