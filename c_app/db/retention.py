"""Queries of the retention job (c_app/services/retention.py), and the lock that lets one replica run it.

Finding: what is older than a cut-off is read a page at a time in primary-key order (keyset: each
page starts after the last key of the one before), so a run reads each table once, however many
pages it takes. Removing: each delete re-checks the cut-off itself, inside the caller's transaction,
so a row that changed since its page was read (a conversation that came back to life) is kept.

The lock (`RunLock`): on PostgreSQL a session-level advisory lock (`AdvisoryLock`), on SQLite a
lease row in `app_meta` (`LeaseLock`). See each class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, exists, or_, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from .memories import CHAT
from .models import AppMeta, ChatSession, Memory, Message, Upload

logger = logging.getLogger(__name__)

LEASE_KEY = "retention_lease"
# PostgreSQL advisory lock (two-int key space, apart from migrate.py's one-bigint key): this class,
# and a hash of the schema in use, so databases sharing a server in different schemas do not contend.
ADVISORY_CLASS = 7_420_002
_SCHEMA_KEY = "hashtext(coalesce(current_schema(), ''))"


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


# -- conversations -------------------------------------------------------------------------------


async def stale_session_ids(
    db: AsyncSession, cutoff: datetime, *, after: str | None, limit: int
) -> list[str]:
    """Ids of sessions last active before the cut-off, in id order, after `after`."""
    query = select(ChatSession.id).where(ChatSession.last_activity_at < cutoff)
    if after is not None:
        query = query.where(ChatSession.id > after)
    return list((await db.execute(query.order_by(ChatSession.id).limit(limit))).scalars())


async def lock_stale_sessions(db: AsyncSession, ids: Sequence[str], cutoff: datetime) -> list[str]:
    """Of these sessions, the ones still last active before the cut-off, locked for this transaction.

    PostgreSQL: FOR UPDATE SKIP LOCKED. A session a chat turn is writing to (its message insert holds
    the session row's key-share lock) is skipped, never waited for: the run does not hold up a turn,
    the turn's new activity keeps the session anyway, and a later run sees it again. A turn that
    comes after the lock waits for this short transaction, then finds the session gone (SessionGone).
    The cut-off is checked again on the newest row version once locked. SQLite: the caller already
    holds the write lock (every writer is serialised), the clause is not rendered."""
    if not ids:
        return []
    query = (
        select(ChatSession.id)
        .where(ChatSession.id.in_(list(ids)), ChatSession.last_activity_at < cutoff)
        .order_by(ChatSession.id)
        .with_for_update(skip_locked=True)
    )
    return list((await db.execute(query)).scalars())


def _still_stale(ids: Sequence[str], cutoff: datetime) -> Any:
    return select(ChatSession.id).where(ChatSession.id.in_(list(ids)), ChatSession.last_activity_at < cutoff)


async def delete_messages_of_stale(
    db: AsyncSession, ids: Sequence[str], cutoff: datetime, *, limit: int
) -> int:
    """Delete up to `limit` messages of these sessions (those still stale), a session's oldest first."""
    if not ids or limit <= 0:
        return 0
    doomed = (
        select(Message.id)
        .where(Message.session_id.in_(_still_stale(ids, cutoff)))
        .order_by(Message.session_id, Message.id)
        .limit(limit)
    )
    result = await db.execute(
        delete(Message).where(Message.id.in_(doomed)).execution_options(synchronize_session=False)
    )
    return _rowcount(result)


async def delete_empty_stale_sessions(
    db: AsyncSession, ids: Sequence[str], cutoff: datetime, *, limit: int
) -> list[str]:
    """Delete up to `limit` of these sessions that are still stale and have no message left; their ids."""
    if not ids or limit <= 0:
        return []
    doomed = (
        _still_stale(ids, cutoff)
        .where(~exists().where(Message.session_id == ChatSession.id))
        .order_by(ChatSession.id)
        .limit(limit)
    )
    # The subquery is its own SELECT (not correlated with the DELETE): read it first, delete by id.
    gone: list[str] = list((await db.execute(doomed)).scalars())
    if gone:
        await db.execute(
            delete(ChatSession).where(ChatSession.id.in_(gone)).execution_options(synchronize_session=False)
        )
    return gone


# -- chat memory ---------------------------------------------------------------------------------


async def old_chat_memories(db: AsyncSession, cutoff: datetime, *, after: int, limit: int) -> list[Memory]:
    """Chat memories (past exchanges) created before the cut-off, as light references (id, scope,
    owner; no content), in id order after `after`."""
    query = (
        select(Memory.id, Memory.scope, Memory.owner_id)
        .where(Memory.scope == CHAT, Memory.created_at < cutoff, Memory.id > after)
        .order_by(Memory.id)
        .limit(limit)
    )
    return [
        Memory(id=row.id, scope=row.scope, owner_id=row.owner_id) for row in (await db.execute(query)).all()
    ]


# -- uploads -------------------------------------------------------------------------------------


async def old_upload_ids(db: AsyncSession, cutoff: datetime, *, after: str | None, limit: int) -> list[str]:
    query = select(Upload.id).where(Upload.created_at < cutoff)
    if after is not None:
        query = query.where(Upload.id > after)
    return list((await db.execute(query.order_by(Upload.id).limit(limit))).scalars())


async def delete_uploads(db: AsyncSession, ids: Sequence[str], cutoff: datetime) -> list[str]:
    """Delete these upload rows (still older than the cut-off); the stored file names (the files are the caller's)."""
    if not ids:
        return []
    condition = (Upload.id.in_(list(ids)), Upload.created_at < cutoff)
    names = list((await db.execute(select(Upload.stored_name).where(*condition))).scalars())
    if names:
        await db.execute(delete(Upload).where(*condition).execution_options(synchronize_session=False))
    return names


# -- the lock ------------------------------------------------------------------------------------


class RunLock(Protocol):
    """Held by one replica for a whole run. `acquire` never waits: False means another holds it."""

    async def acquire(self) -> bool: ...

    async def keep(self, db: AsyncSession) -> bool:
        """Still held? Called at the start of every batch transaction (`db`); False ends the run."""
        ...

    async def release(self) -> None: ...


class AdvisoryLock:
    """PostgreSQL: `pg_try_advisory_lock` on a connection of its own, held for the whole run.

    Session level, not per batch (`pg_try_advisory_xact_lock`): a transaction-level lock would be
    released between batches, so two replicas could interleave batches of one run. The connection
    is in autocommit, so holding it keeps no transaction (and no snapshot) open; the batches run on
    other connections. Should the process die, PostgreSQL ends the session and the lock with it.
    `keep` pings the connection: a live session still holds its lock. Released with
    `pg_advisory_unlock`; a connection whose release failed is invalidated (closed, not pooled),
    which releases the lock as well. Not for a pooler in transaction mode (PgBouncer), which would
    hand the session to others; point DATABASE_URL at PostgreSQL itself or a session-mode pool.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._conn: AsyncConnection | None = None

    async def acquire(self) -> bool:
        conn = await self.engine.connect()
        try:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            statement = text(f"SELECT pg_try_advisory_lock(:cls, {_SCHEMA_KEY})")
            held = bool((await conn.execute(statement, {"cls": ADVISORY_CLASS})).scalar())
        except BaseException:
            await conn.invalidate()
            await conn.close()
            raise
        if not held:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def keep(self, db: AsyncSession) -> bool:
        if self._conn is None:
            return False
        try:
            await self._conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError):  # the session (and its lock) is gone: the run stops
            logger.warning("retention: the advisory lock's connection was lost")
            return False
        return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        released = False
        try:
            statement = text(f"SELECT pg_advisory_unlock(:cls, {_SCHEMA_KEY})")
            released = bool((await conn.execute(statement, {"cls": ADVISORY_CLASS})).scalar())
        except (SQLAlchemyError, OSError):
            logger.warning("retention: the advisory lock could not be released; its connection is closed")
        finally:
            try:
                if not released:
                    await conn.invalidate()  # never back into the pool still holding the lock
            finally:
                await conn.close()


def _stamp(moment: datetime) -> str:
    """A fixed-width UTC time whose text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseLock:
    """SQLite (any database, in fact): a lease row in `app_meta`, value `<expiry> <holder>`.

    Taken by one compare-and-set UPDATE: `value < now` holds for a free lease (value "") and for a
    lapsed one (the expiry sorts first), so of several replicas exactly one updates the row. The lease
    lasts `ttl` and is renewed at the start of every batch transaction by another compare-and-set
    (the value still names this holder), inside that transaction: a holder that lost its lease (it
    stalled past the expiry and another took over) has its batch rolled back rather than committed
    beside the new holder's. A crashed holder's lease simply lapses. Released by setting the value
    back to "". `holder` is unique to one service instance, which runs one run at a time.
    """

    def __init__(
        self, sessionmaker: Any, *, holder: str, clock: Callable[[], datetime], ttl: timedelta
    ) -> None:
        self.sessionmaker = sessionmaker
        self.holder = holder
        self.clock = clock
        self.ttl = ttl
        self._held = False

    def _next(self) -> str:
        return f"{_stamp(self.clock() + self.ttl)} {self.holder}"

    def _mine(self) -> Any:
        return AppMeta.value.endswith(f" {self.holder}", autoescape=True)

    async def acquire(self) -> bool:
        mine = self._next()
        try:
            async with self.sessionmaker() as db, db.begin():
                result = await db.execute(
                    update(AppMeta)
                    # Free, lapsed, or this holder's own (a release that failed).
                    .where(AppMeta.key == LEASE_KEY, or_(AppMeta.value < _stamp(self.clock()), self._mine()))
                    .values(value=mine)
                    .execution_options(synchronize_session=False)
                )
                if _rowcount(result) != 1:
                    present = (await db.execute(select(AppMeta.key).where(AppMeta.key == LEASE_KEY))).first()
                    if present is not None:
                        return False
                    # The first run ever: the row is created taken. Two first runs at once: one insert
                    # fails on the primary key, and that replica skips.
                    db.add(AppMeta(key=LEASE_KEY, value=mine))
        except IntegrityError:
            return False
        self._held = True
        return True

    async def keep(self, db: AsyncSession) -> bool:
        if not self._held:
            return False
        result = await db.execute(
            update(AppMeta)
            .where(AppMeta.key == LEASE_KEY, self._mine())
            .values(value=self._next())
            .execution_options(synchronize_session=False)
        )
        if _rowcount(result) != 1:
            logger.warning("retention: the lease was taken over by another replica")
            self._held = False
            return False
        return True

    async def release(self) -> None:
        if not self._held:
            return
        self._held = False
        async with self.sessionmaker() as db, db.begin():
            await db.execute(
                update(AppMeta)
                .where(AppMeta.key == LEASE_KEY, self._mine())
                .values(value="")
                .execution_options(synchronize_session=False)
            )
