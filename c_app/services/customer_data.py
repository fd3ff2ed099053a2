"""One customer's personal data as a whole: export it as one archive, or erase it.

A customer is a user id. What the service holds about them: chat sessions and their messages (with
the customer's ratings), private memories, chat memory (past exchanges), uploads (rows and files),
sensitive-word events, and tickets (留言 left while no agent was there).

Export (`export`): a zip built in an anonymous temporary file beside the uploads (never in memory,
whatever the customer's volume): `customer.json`, written row batch by row batch, and the upload
files under `uploads/`. The caller streams the file and closes it.

Erasure (`erase`), in one transaction: the sessions are locked first, then messages, sessions,
private and chat memories (each removal logged in `memory_changes`, so every replica's index drops
them; their vectors go too), upload rows, sensitive-word events and tickets are deleted, the upload files
unlinked, and the audit entry written; entries naming the customer get their pseudonym (see
audit_service). The customer's rate-limit counters are cleared first (outside the database).
Repeating it finds nothing and removes nothing.

An answer still streaming for the customer cannot bring anything back: it is stored with the chat
memory of its exchange in one transaction that first moves its session's counters, under the
session row's lock (`SessionService.add_message(along=...)`), so the erasure is wholly before it
(`SessionGone`: nothing is stored) or after it (and removes the answer and the exchange too).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import IO, Any, TypeVar

import anyio
from limits.errors import StorageError
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import agents as agents_repo
from ..db import customers as repo
from ..db import tickets as tickets_repo
from ..db.memories import CHAT, PRIVATE
from ..db.models import Memory, Upload
from ..schemas.privacy import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    NOT_YET_HELD,
    export_chat_memory,
    export_message,
    export_moderation_event,
    export_private_memory,
    export_session,
    export_ticket,
    export_upload,
)
from ..security.rate_limit import RateLimits
from .audit_service import AuditContext, AuditService
from .index_sync import IndexSync, iter_scope
from .upload_service import UploadService

logger = logging.getLogger(__name__)

R = TypeVar("R")

EXPORT_BATCH = 500
_READ_CHUNK = 64 * 1024
UPLOADS_FOLDER = "uploads/"


@dataclass(slots=True)
class ExportArchive:
    """A finished archive in an anonymous temporary file; `chunks()` streams it and closes it."""

    file: IO[bytes]
    size: int
    counts: dict[str, int]

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await anyio.to_thread.run_sync(self.file.read, _READ_CHUNK):
                yield chunk
        finally:
            self.file.close()

    def close(self) -> None:
        self.file.close()


@dataclass(slots=True)
class Erasure:
    """What an erasure removed (counts by kind) and the sessions it removed (to stop their answers)."""

    counts: dict[str, int]
    session_ids: list[str] = field(default_factory=list)


class _JsonOut:
    """customer.json inside the archive, written piece by piece from a worker thread."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    async def write(self, text: str) -> None:
        await anyio.to_thread.run_sync(self.stream.write, text.encode("utf-8"))


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class CustomerDataService:
    def __init__(self, sync: IndexSync, uploads: UploadService, audit: AuditService) -> None:
        self.sync = sync
        self.db = sync.db
        self.uploads = uploads
        self.audit = audit

    # -- export -----------------------------------------------------------------------------------

    async def export(self, user_id: str, context: AuditContext) -> ExportArchive:
        """Build the customer's archive (an unknown customer gets one with empty lists) and record it."""
        directory = self.uploads.directory
        directory.mkdir(parents=True, exist_ok=True)
        # Anonymous (no name on disk on Linux), readable by this process only, gone when closed.
        handle = tempfile.TemporaryFile(dir=directory, prefix=".export-")  # noqa: SIM115 (closed by the stream)
        try:
            counts = await self._write_archive(handle, user_id)
            size = os.fstat(handle.fileno()).st_size
            handle.seek(0)
            await self.audit.record(
                context,
                "customer.export",
                target_type="customer",
                target_id=user_id,
                customer_id=user_id,
                detail={**counts, "bytes": size},
            )
        except BaseException:
            handle.close()
            raise
        return ExportArchive(handle, size, counts)

    async def _write_archive(self, handle: IO[bytes], user_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        files: list[tuple[str, Upload]] = []
        present: set[str] = set()

        async def upload_pages() -> AsyncIterator[list[Upload]]:
            async for rows in self._pages(partial(repo.uploads_page, user_id=user_id), None, _id):
                for row in rows:
                    if await self.uploads.exists(row.stored_name):
                        present.add(row.stored_name)
                yield rows

        def render_upload(row: Any) -> dict[str, Any]:
            if row.stored_name not in present:
                return export_upload(row, None)
            arcname = UPLOADS_FOLDER + row.stored_name
            files.append((arcname, row))
            return export_upload(row, arcname)

        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            with archive.open("customer.json", "w", force_zip64=True) as stream:
                out = _JsonOut(stream)
                head = {
                    "format": EXPORT_FORMAT,
                    "version": EXPORT_VERSION,
                    "user_id": user_id,
                    "exported_at": datetime.now(UTC).isoformat(),
                }
                await out.write("{" + _dump(head)[1:-1])
                lists: list[tuple[str, AsyncIterator[list[Any]], Callable[[Any], dict[str, Any]]]] = [
                    (
                        "sessions",
                        self._pages(partial(repo.sessions_page, user_id=user_id), None, _id),
                        export_session,
                    ),
                    (
                        "messages",
                        self._pages(partial(repo.messages_page, user_id=user_id), 0, _id),
                        export_message,
                    ),
                    ("private_memories", self._memories(PRIVATE, user_id), export_private_memory),
                    ("chat_memories", self._memories(CHAT, user_id), export_chat_memory),
                    ("uploads", upload_pages(), render_upload),
                    (
                        "moderation_events",
                        self._pages(partial(repo.moderation_page, user_id=user_id), 0, _id),
                        export_moderation_event,
                    ),
                    (
                        "tickets",
                        self._pages(partial(tickets_repo.for_user, user_id=user_id), 0, _id),
                        export_ticket,
                    ),
                ]
                for name, batches, render in lists:
                    counts[name] = await _write_list(out, name, batches, render)
                # Kinds of data the service does not hold yet: listed, empty, and said so.
                for name in NOT_YET_HELD:
                    await out.write(f",{_dump(name)}:[]")
                    counts[name] = 0
                await out.write(f',"not_yet_held":{_dump(NOT_YET_HELD)},"counts":{_dump(counts)}}}')
            missing = 0
            for arcname, row in files:
                try:
                    await self._add_file(archive, arcname, row)
                except FileNotFoundError:
                    missing += 1  # removed after it was listed (an erasure running meanwhile)
        counts["upload_files"] = len(files) - missing
        return counts

    async def _add_file(self, archive: zipfile.ZipFile, arcname: str, row: Upload) -> None:
        """Images are compressed already: stored as they are, copied from a worker thread (a local
        file as it is, an object from the bucket chunk by chunk)."""
        path = self.uploads.local_path(row)
        if path is not None:
            await anyio.to_thread.run_sync(
                partial(archive.write, path, arcname, compress_type=zipfile.ZIP_STORED)
            )
            return
        stored = await self.uploads.stream(row)
        info = zipfile.ZipInfo(arcname, date_time=datetime.now().timetuple()[:6])
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = stored.size
        with archive.open(info, "w", force_zip64=True) as out:
            async for chunk in stored.chunks:
                await anyio.to_thread.run_sync(out.write, chunk)

    async def _pages(
        self, read: Callable[..., Awaitable[list[R]]], start: Any, key: Callable[[R], Any]
    ) -> AsyncIterator[list[R]]:
        """Keyset pages of one kind of row, each in a short read of its own."""
        after = start
        while True:
            async with self.db.read() as db:
                rows = await read(db, after=after, limit=EXPORT_BATCH)
            if rows:
                yield rows
            if len(rows) < EXPORT_BATCH:
                return
            after = key(rows[-1])

    async def _memories(self, scope: str, user_id: str) -> AsyncIterator[list[Memory]]:
        async for rows in iter_scope(self.db, scope=scope, owner_id=user_id, batch=EXPORT_BATCH):
            yield rows

    # -- erasure ----------------------------------------------------------------------------------

    async def erase(
        self, user_id: str, context: AuditContext, *, limits: RateLimits | None = None
    ) -> Erasure:
        """Remove everything held about the customer; returns the counts (all zero the second time)."""
        rate_limit_keys = await clear_rate_limits(limits, user_id)
        pseudonym = await self.audit.pseudonym(user_id)  # before the transaction: it may write the key
        async with self.sync.writing() as db:
            session_ids = await repo.lock_sessions(db, user_id)
            messages = await repo.delete_messages(db, user_id)
            sessions = await repo.delete_sessions(db, user_id)
            removed = await repo.memory_refs(db, user_id, (PRIVATE, CHAT))
            await repo.delete_memories(db, removed)
            names = await repo.delete_uploads(db, user_id)
            events = await repo.delete_moderation_events(db, user_id)
            tickets = await tickets_repo.delete_for_user(db, user_id)
            # The live events about the sessions (agents' and the customer's messages; issue 10).
            await agents_repo.delete_session_events(db, session_ids)
            # Files go before the commit: should the commit fail, the rows remain (a retry finishes the
            # job), whereas files left behind by a committed erasure would be known to nobody.
            files = await self.uploads.remove_files(names)
            counts = {
                "sessions": sessions,
                "messages": messages,
                "private_memories": sum(1 for ref in removed if ref.scope == PRIVATE),
                "chat_memories": sum(1 for ref in removed if ref.scope == CHAT),
                "uploads": len(names),
                "upload_files": files,
                "moderation_events": events,
                "tickets": tickets,
                "rate_limit_keys": rate_limit_keys,
                "audit_entries_pseudonymised": await self.audit.pseudonymise(db, user_id, pseudonym),
            }
            await self._record_erasure(db, context, pseudonym, counts)
        self.sync.applied([], removed)
        if any(counts.values()):
            logger.info("customer data erased: %s", counts)
        return Erasure(counts=counts, session_ids=session_ids)

    async def _record_erasure(
        self, db: AsyncSession, context: AuditContext, pseudonym: str, counts: dict[str, int]
    ) -> None:
        # The erasure's own entry names the customer by pseudonym from the start.
        await self.audit.record(
            context,
            "customer.erase",
            target_type="customer",
            target_id=pseudonym,
            customer_id=pseudonym,
            detail=counts,
            db=db,
        )


async def _write_list(
    out: _JsonOut,
    name: str,
    batches: AsyncIterator[list[Any]],
    render: Callable[[Any], dict[str, Any]],
) -> int:
    """`,"name":[...]` from the batches; returns how many items were written."""
    await out.write(f",{_dump(name)}:[")
    written = 0
    async for rows in batches:
        text = ",".join(_dump(render(row)) for row in rows)
        await out.write(("," if written else "") + text)
        written += len(rows)
    await out.write("]")
    return written


def _id(row: Any) -> Any:
    return row.id


async def clear_rate_limits(limits: RateLimits | None, user_id: str) -> int:
    """Clear the customer's counters of every named limit (identity `user:<id>`); returns how many
    held hits. An unreachable store is logged and skipped: its counters expire on their own."""
    if limits is None:
        return 0
    identity = f"user:{user_id[:128]}"
    cleared = 0
    for name, item in limits.items.items():
        if item is None:
            continue
        try:
            stats = await limits.limiter.get_window_stats(item, limits.prefix, name, identity)
            if stats.remaining >= item.amount:
                continue  # no hits counted: nothing to clear
            await limits.limiter.clear(item, limits.prefix, name, identity)
        except StorageError:
            logger.warning(
                "rate-limit storage unavailable; %s counter of an erased customer not cleared", name
            )
            continue
        cleared += 1
    return cleared
