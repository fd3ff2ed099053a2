"""Retention (RETENTION_DAYS): what is older than the retention period is purged by a periodic job.

What goes, with the cut-off = now - RETENTION_DAYS:
- conversations: sessions whose last activity is before the cut-off, with all their messages (a
  session started long ago but active since is kept whole);
- chat memory: past exchanges (memories of scope chat) created before the cut-off, each removal
  logged in `memory_changes` (`IndexSync.writing` + `applied`), so every replica's index drops them;
- uploads: rows created before the cut-off and their files (on disk, or objects in the bucket);
- tickets (留言): those last written before the cut-off (open or closed).

One replica at a time: every run first takes a database lock (c_app/db/retention.py: an advisory
lock on PostgreSQL, a lease row in `app_meta` on SQLite); a replica that finds it held skips that
run. In batches: every transaction removes at most RETENTION_BATCH_SIZE rows and the event loop gets
a turn between batches, so chat turns wait for the job (SQLite's single writer) no longer than one
batch. A run logs one INFO line with counts (never content). A failed run is logged and the next
interval tries again; the loop itself only ends with `stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from ..config import Settings
from ..db import retention as repo
from ..db import tickets as tickets_repo
from ..db.customers import delete_memories
from ..db.models import utcnow
from .index_sync import IndexSync
from .upload_service import UploadService

logger = logging.getLogger(__name__)

LEASE_TTL = timedelta(minutes=5)  # SQLite lease; renewed at every batch, so only a stalled holder loses it
FIRST_RUN_DELAY = 60.0  # seconds after start (or the interval, if shorter): a replica restarted more
# often than the interval still runs the job


class LockLost(Exception):
    """The run's lock was lost between batches (the batch in hand was rolled back)."""


@dataclass(slots=True)
class RetentionRun:
    """What one run removed. `skipped`: why nothing was done ("disabled", or "locked": another replica
    or another run of this process holds the lock); `lock_lost`: the run stopped part-way."""

    skipped: str | None = None
    sessions: int = 0
    messages: int = 0
    chat_memories: int = 0
    uploads: int = 0
    upload_files: int = 0
    tickets: int = 0
    transactions: int = 0
    lock_lost: bool = False

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if isinstance(v, int) and not isinstance(v, bool)}


class RetentionService:
    def __init__(
        self,
        sync: IndexSync,
        uploads: UploadService,
        settings: Settings,
        *,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sync = sync
        self.db = sync.db
        self.uploads = uploads
        self.settings = settings
        self.clock = now
        self.holder = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._running = asyncio.Lock()  # one run at a time within this process too
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.retention_days is not None

    @property
    def batch(self) -> int:
        return self.settings.retention_batch_size

    # -- the loop ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the job every RETENTION_INTERVAL_SECONDS in the background (when RETENTION_DAYS is set)."""
        if not self.enabled or self._task is not None:
            return
        self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _loop(self) -> None:
        interval = self.settings.retention_interval_seconds
        await asyncio.sleep(min(interval, FIRST_RUN_DELAY))
        while True:
            try:
                await self.run_once()
            except Exception:  # the job must outlive any one run's failure
                logger.exception("retention run failed; tried again in %g s", interval)
            await asyncio.sleep(interval)

    # -- one run ----------------------------------------------------------------------------------

    def _lock(self) -> repo.RunLock:
        if self.settings.is_sqlite:
            return repo.LeaseLock(self.db.sessionmaker, holder=self.holder, clock=self.clock, ttl=LEASE_TTL)
        return repo.AdvisoryLock(self.db.engine)

    async def run_once(self, now: datetime | None = None) -> RetentionRun:
        """Purge what is older than RETENTION_DAYS before `now` (default: the clock), if this replica
        gets the lock. Returns the counts, or why it skipped."""
        days = self.settings.retention_days
        if days is None:
            return RetentionRun(skipped="disabled")
        if self._running.locked():
            return RetentionRun(skipped="locked")
        async with self._running:
            cutoff = (now or self.clock()) - timedelta(days=days)
            lock = self._lock()
            if not await lock.acquire():
                logger.info("retention run skipped: another replica is running it")
                return RetentionRun(skipped="locked")
            run = RetentionRun()
            started = time.monotonic()
            try:
                await self._purge_sessions(lock, cutoff, run)
                await self._purge_chat_memories(lock, cutoff, run)
                await self._purge_uploads(lock, cutoff, run)
                await self._purge_tickets(lock, cutoff, run)
            except LockLost:
                run.lock_lost = True
            finally:
                await lock.release()
            logger.info(
                "retention run%s: removed %d sessions, %d messages, %d chat memories, %d uploads "
                "(%d files), %d tickets older than %s, in %d transactions, %.2f s",
                " (stopped: lock lost)" if run.lock_lost else "",
                run.sessions,
                run.messages,
                run.chat_memories,
                run.uploads,
                run.upload_files,
                run.tickets,
                cutoff.isoformat(timespec="seconds"),
                run.transactions,
                time.monotonic() - started,
            )
            return run

    async def _pause(self, run: RetentionRun) -> None:
        """Between batches: count the transaction, and let chat turns have the event loop."""
        run.transactions += 1
        await asyncio.sleep(0)

    async def _purge_sessions(self, lock: repo.RunLock, cutoff: datetime, run: RetentionRun) -> None:
        """A page of stale sessions at a time; each transaction removes at most a batch of rows: their
        messages (a session's oldest first), then the sessions left empty. Every message of a stale
        session is older than the cut-off, so a conversation that comes back to life part-way through
        loses only messages past retention, and is itself kept."""
        after: str | None = None
        while True:
            async with self.db.read() as db:
                page = await repo.stale_session_ids(db, cutoff, after=after, limit=self.batch)
            remaining = page
            while remaining:
                async with self.db.transaction() as db:
                    if not await lock.keep(db):
                        raise LockLost
                    stale = await repo.lock_stale_sessions(db, remaining, cutoff)
                    messages = await repo.delete_messages_of_stale(db, stale, cutoff, limit=self.batch)
                    gone = await repo.delete_empty_stale_sessions(
                        db, stale, cutoff, limit=self.batch - messages
                    )
                run.messages += messages
                run.sessions += len(gone)
                await self._pause(run)
                if not messages and not gone:
                    break  # nothing left that this run may remove (sessions skipped or active again)
                # Sessions not locked (in use, or active again) are left to a later run.
                removed = set(gone)
                remaining = [sid for sid in stale if sid not in removed]
            if len(page) < self.batch:
                return
            after = page[-1]

    async def _purge_chat_memories(self, lock: repo.RunLock, cutoff: datetime, run: RetentionRun) -> None:
        after = 0
        while True:
            async with self.db.read() as db:
                refs = await repo.old_chat_memories(db, cutoff, after=after, limit=self.batch)
            if not refs:
                return
            async with self.sync.writing() as db:
                if not await lock.keep(db):
                    raise LockLost
                await delete_memories(db, refs)  # each removal logged in memory_changes
            self.sync.applied([], refs)  # this replica's indexes at once; the others from the change log
            run.chat_memories += len(refs)
            await self._pause(run)
            if len(refs) < self.batch:
                return
            after = refs[-1].id

    async def _purge_uploads(self, lock: repo.RunLock, cutoff: datetime, run: RetentionRun) -> None:
        after: str | None = None
        while True:
            async with self.db.read() as db:
                ids = await repo.old_upload_ids(db, cutoff, after=after, limit=self.batch)
            if not ids:
                return
            async with self.db.transaction() as db:
                if not await lock.keep(db):
                    raise LockLost
                names = await repo.delete_uploads(db, ids, cutoff)
                # Files go before the commit (as in an erasure): should the commit fail, the rows remain
                # and the next run finishes the job; files of committed deletes would be known to nobody.
                files = await self.uploads.remove_files(names)
            run.uploads += len(names)
            run.upload_files += files
            await self._pause(run)
            if len(ids) < self.batch:
                return
            after = ids[-1]

    async def _purge_tickets(self, lock: repo.RunLock, cutoff: datetime, run: RetentionRun) -> None:
        while True:
            async with self.db.transaction() as db:
                if not await lock.keep(db):
                    raise LockLost
                ids = await tickets_repo.stale_ids(db, cutoff, limit=self.batch)
                removed = await tickets_repo.delete_stale(db, ids, cutoff)
            run.tickets += removed
            await self._pause(run)
            if len(ids) < self.batch or not removed:
                return
