"""Memory in three scopes, and the search indexes over them.

public  - the knowledge base, one index per process, loaded at start;
private - what a user or an operator saved about the user;
chat    - the user's past exchanges, bounded per user.

Private and chat indexes are built per user on first use and kept in an LRU cache. Every process
follows the `memory_changes` log (at most every `index_refresh_interval` seconds) so a write made
by another replica is searchable here within a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..config import Settings
from ..db import memories as repo
from ..db.engine import Database
from ..db.memories import CHAT, PRIVATE, PUBLIC, RetrievedMemory
from ..db.models import Memory
from ..errors import Conflict, NotFound
from ..retrieval import DEFAULT_ANSWER_THRESHOLD, LexicalIndex, analyze
from .dense_search import DenseSearch

logger = logging.getLogger(__name__)

_LOAD_BATCH = 5000
ENTRY_NOT_FOUND = "知识条目不存在"
MEMORY_NOT_FOUND = "记忆不存在"
EXTERNAL_ID_TAKEN = "外部ID已存在"

_GAP_TTL = 10.0  # seconds a missing change sequence number is waited for (a transaction still committing)


# Import-row keys -> Memory columns.
_PUBLIC_COLUMNS = {
    "title": "title",
    "category": "category",
    "question": "question",
    "similar_questions": "similar_questions",
    "answer": "content",
    "metadata": "meta",
}


def public_fields(entry: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """Column values of a knowledge-base entry given as an import row; partial: only the keys present."""
    if "answer" not in entry and "content" in entry:
        entry = {**entry, "answer": entry["content"]}
    out: dict[str, Any] = {}
    for key, column in _PUBLIC_COLUMNS.items():
        if partial and key not in entry:
            continue
        value = entry.get(key)
        if column == "similar_questions":
            out[column] = list(value or [])
        elif column == "meta":
            out[column] = dict(value or {})
        else:
            out[column] = value or ""
    return out


def index_fields(memory: Memory) -> tuple[list[str], str]:
    """What a memory is matched on: (questions, secondary text).

    A knowledge-base entry or a past exchange is matched on its question and similar questions,
    with its title as secondary text; its answer is not indexed. Customers ask in question words,
    and indexing ~150-character answers made nearly every query touch nearly every entry: at
    100,000 entries it cut the index build 6x and tripled query time (bench/README.md, Scale).
    A private memory is a statement, matched on its content.
    """
    if memory.question:
        return [memory.question, *[q for q in memory.similar_questions if q]], memory.title
    return [memory.content], memory.title


class MemoryService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.answer_threshold = (
            settings.answer_threshold if settings.answer_threshold is not None else DEFAULT_ANSWER_THRESHOLD
        )
        self.public_index = LexicalIndex()
        # Kept current only once `start` has loaded it (a one-shot CLI import has no use for it).
        self._public_loaded = False
        self._user_indexes: OrderedDict[tuple[str, str], LexicalIndex] = OrderedDict()
        self._last_seq = 0
        self._gaps: dict[int, float] = {}
        # Change-log entries this process wrote itself (and indexed at once): skipped when read back.
        self._own_seqs: set[int] = set()
        self._last_poll = 0.0
        self._refresh_lock = asyncio.Lock()
        # Optional dense retrieval over the knowledge base (set by build_services with EMBEDDING_BASE_URL).
        self.dense: DenseSearch | None = None

    # -- start-up and cross-process sync ------------------------------------------------------

    async def start(self) -> None:
        """Build the public index from the database."""
        async with self.db.read() as db:
            self._last_seq = await repo.last_change(db)
        async for rows in self.iter_public(batch=_LOAD_BATCH):
            for row in rows:
                self.public_index.upsert(row.id, *index_fields(row))
            await asyncio.sleep(0)
        self._last_poll = time.monotonic()
        self._public_loaded = True
        logger.info("public index loaded: %d entries", len(self.public_index))
        if self.dense is not None:
            await self.dense.start()

    async def stop(self) -> None:
        """Stop background work (the embedding worker, when dense retrieval is on)."""
        if self.dense is not None:
            await self.dense.stop()

    async def refresh(self, *, force: bool = False) -> None:
        """Apply other processes' memory writes logged since the last refresh."""
        if not force and time.monotonic() - self._last_poll < self.settings.index_refresh_interval:
            return
        async with self._refresh_lock:
            if not force and time.monotonic() - self._last_poll < self.settings.index_refresh_interval:
                return
            await self._poll_changes()
            self._last_poll = time.monotonic()

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncSession]:
        """A write transaction whose change-log entries this process will not re-apply."""
        async with self.db.transaction() as db:
            yield db
        self._own_seqs.update(repo.own_change_seqs(db))

    async def _poll_changes(self) -> None:
        now = time.monotonic()
        self._gaps = {seq: seen for seq, seen in self._gaps.items() if now - seen < _GAP_TTL}
        # Own entries right after the last applied one need not be read back at all (a bulk import).
        while self._last_seq + 1 in self._own_seqs:
            self._last_seq += 1
            self._own_seqs.discard(self._last_seq)
        async with self.db.read() as db:
            changes = await repo.changes_since(db, self._last_seq, also=list(self._gaps))
            if not changes:
                return
            foreign = [c for c in changes if c.seq not in self._own_seqs]
            rows = await repo.get_many(db, sorted({c.memory_id for c in foreign})) if foreign else {}
        for change in changes:
            self._gaps.pop(change.seq, None)
            self._own_seqs.discard(change.seq)
        # A sequence number skipped over may belong to a transaction that has not committed yet.
        seen = {c.seq for c in changes}
        top = max(seen)
        for seq in range(self._last_seq + 1, top + 1):
            if seq not in seen:
                self._gaps[seq] = now
        self._last_seq = max(self._last_seq, top)
        for change in foreign:
            index = self._index_for(change.scope, change.owner_id)
            if index is None:
                continue
            row = rows.get(change.memory_id)
            if row is None:
                index.remove(change.memory_id)
            else:
                index.upsert(row.id, *index_fields(row))
        if self.dense is not None and self._public_loaded:
            self.dense.schedule_ids(c.memory_id for c in foreign if c.scope == PUBLIC)

    def _index_for(self, scope: str, owner_id: str) -> LexicalIndex | None:
        """The loaded index holding this scope and owner, if any (a user's is marked recently used)."""
        if scope == PUBLIC:
            return self.public_index if self._public_loaded else None
        key = (scope, owner_id)
        index = self._user_indexes.get(key)
        if index is not None:
            self._user_indexes.move_to_end(key)
        return index

    async def _user_index(self, scope: str, owner_id: str) -> LexicalIndex:
        index = self._index_for(scope, owner_id)
        if index is not None:
            return index
        async with self.db.read() as db:
            rows = await repo.list_for_owner(db, scope=scope, owner_id=owner_id)
        index = LexicalIndex()
        for row in rows:
            index.upsert(row.id, *index_fields(row))
        self._user_indexes[(scope, owner_id)] = index
        while len(self._user_indexes) > self.settings.user_index_cache_size:
            self._user_indexes.popitem(last=False)
        return index

    def _applied(self, rows: Iterable[Memory], removed: Iterable[Memory] = ()) -> None:
        """Reflect this process's own committed writes at once (read-your-writes)."""
        for row in rows:
            index = self._index_for(row.scope, row.owner_id)
            if index is not None:
                index.upsert(row.id, *index_fields(row))
        for row in removed:
            index = self._index_for(row.scope, row.owner_id)
            if index is not None:
                index.remove(row.id)
        if self.dense is not None and self._public_loaded:
            self.dense.schedule(rows, removed)

    # -- writes ---------------------------------------------------------------------------------

    async def add_private(self, user_id: str, content: str, metadata: dict[str, Any] | None = None) -> Memory:
        meta = dict(metadata or {})
        title = str(meta.get("title", ""))[:500]
        category = str(meta.get("category", ""))[:100]
        async with self._writing() as db:
            row = await repo.add(
                db, scope=PRIVATE, owner_id=user_id, content=content, title=title, category=category, meta=meta
            )
        self._applied([row])
        return row

    async def add_exchange(
        self, user_id: str, question: str, answer: str, session_id: str, *, grounded: bool
    ) -> None:
        """Remember a finished exchange in the user's chat memory, keeping the newest N.

        grounded: the answer came from the knowledge or memories, so it may be repeated later.
        """
        async with self._writing() as db:
            row = await repo.add(
                db,
                scope=CHAT,
                owner_id=user_id,
                question=question[:2000],
                content=f"用户：{question[:2000]}\n客服：{answer[:4000]}",
                meta={"session_id": session_id, "grounded": grounded},
            )
            dropped = await repo.trim(db, scope=CHAT, owner_id=user_id, keep=self.settings.chat_memory_limit)
        self._applied([row], dropped)

    async def upsert_public(self, entries: list[dict[str, Any]]) -> tuple[int, int]:
        """Insert or update knowledge-base entries (matched on external_id) in one transaction.

        Returns (created, updated). A later entry with the same external_id as an earlier one in
        the same call updates it.
        """
        new: list[dict[str, Any]] = []
        new_by_ext: dict[str, dict[str, Any]] = {}
        updated: dict[int, Memory] = {}
        repeats = 0
        async with self._writing() as db:
            ext_ids = [e["external_id"] for e in entries if e.get("external_id")]
            existing = await repo.by_external_ids(db, ext_ids, scope=PUBLIC, owner_id="")
            for entry in entries:
                fields = public_fields(entry)
                ext_id = entry.get("external_id") or None
                row = existing.get(ext_id or "")
                if row is not None:
                    for key, value in fields.items():
                        setattr(row, key, value)
                    updated[row.id] = row
                elif ext_id is not None and ext_id in new_by_ext:
                    new_by_ext[ext_id].update(fields)
                    repeats += 1
                else:
                    fields["external_id"] = ext_id
                    new.append(fields)
                    if ext_id is not None:
                        new_by_ext[ext_id] = fields
            created = await repo.add_many(db, new, scope=PUBLIC, owner_id="") if new else []
            if updated:
                await repo.touch_many(db, list(updated.values()))
        self._applied([*created, *updated.values()])
        return len(created), len(updated) + repeats

    async def create_public(self, entry: dict[str, Any]) -> Memory:
        """Add one knowledge-base entry; Conflict when its external_id is taken."""
        fields = public_fields(entry)
        try:
            async with self._writing() as db:
                await self._check_external_id(db, entry.get("external_id"))
                row = await repo.add(
                    db, scope=PUBLIC, owner_id="", external_id=entry.get("external_id") or None, **fields
                )
        except IntegrityError as exc:  # a concurrent writer took the external_id first
            raise Conflict(EXTERNAL_ID_TAKEN) from exc
        self._applied([row])
        return row

    async def update_public(self, memory_id: int, changes: dict[str, Any]) -> Memory:
        """Change some fields of an entry (keys as in an import row; `answer` is the content)."""
        try:
            async with self._writing() as db:
                row = await self._public_row(db, memory_id)
                if "external_id" in changes and (changes["external_id"] or None) != row.external_id:
                    await self._check_external_id(db, changes["external_id"])
                    row.external_id = changes["external_id"] or None
                for key, value in public_fields(changes, partial=True).items():
                    setattr(row, key, value)
                await repo.touch(db, row)
        except IntegrityError as exc:
            raise Conflict(EXTERNAL_ID_TAKEN) from exc
        self._applied([row])
        return row

    async def delete_public(self, memory_id: int) -> None:
        async with self._writing() as db:
            row = await self._public_row(db, memory_id)
            await repo.remove(db, row)
        self._applied([], [row])

    async def prune_public(self, external_prefix: str, keep: set[str]) -> int:
        """Delete entries whose external_id starts with the prefix and is not kept (a re-imported
        document's chunks that no longer exist). Returns how many were deleted."""
        async with self._writing() as db:
            rows = await repo.with_external_prefix(db, external_prefix, scope=PUBLIC, owner_id="")
            stale = [row for row in rows if row.external_id not in keep]
            for row in stale:
                await repo.remove(db, row)
        self._applied([], stale)
        return len(stale)

    async def _check_external_id(self, db: AsyncSession, external_id: str | None) -> None:
        if external_id and await repo.by_external_ids(db, [external_id], scope=PUBLIC, owner_id=""):
            raise Conflict(EXTERNAL_ID_TAKEN)

    async def _public_row(self, db: AsyncSession, memory_id: int) -> Memory:
        row = await repo.get(db, memory_id, scope=PUBLIC, owner_id="")
        if row is None:
            raise NotFound(ENTRY_NOT_FOUND)
        return row

    async def update_private(
        self, user_id: str, memory_id: int, *, content: str | None, metadata: dict[str, Any] | None
    ) -> Memory:
        async with self._writing() as db:
            row = await self._private_row(db, user_id, memory_id)
            if content is not None:
                row.content = content
            if metadata is not None:
                row.meta = dict(metadata)
                row.title = str(metadata.get("title", ""))[:500]
                row.category = str(metadata.get("category", ""))[:100]
            await repo.touch(db, row)
        self._applied([row])
        return row

    async def delete_private(self, user_id: str, memory_id: int) -> None:
        async with self._writing() as db:
            row = await self._private_row(db, user_id, memory_id)
            await repo.remove(db, row)
        self._applied([], [row])

    async def _private_row(self, db: AsyncSession, user_id: str, memory_id: int) -> Memory:
        row = await repo.get(db, memory_id, scope=PRIVATE, owner_id=user_id)
        if row is None:
            raise NotFound(MEMORY_NOT_FOUND)
        return row

    # -- reads ----------------------------------------------------------------------------------

    async def search(self, user_id: str, query: str, *, limit: int) -> list[RetrievedMemory]:
        """The best `limit` hits of each scope, merged and sorted by score (best first)."""
        await self.refresh()
        hits: list[tuple[str, int, float]] = []
        for scope in (PRIVATE, CHAT):
            index = await self._user_index(scope, user_id)
            hits.extend((scope, doc, score) for doc, score in index.search(query, limit))
        hits.extend((PUBLIC, doc, score) for doc, score in await self._public_hits(query, limit))
        async with self.db.read() as db:
            rows = await repo.get_many(db, [doc for _, doc, _ in hits])
        found = [
            RetrievedMemory(rows[doc], scope, score)
            for scope, doc, score in hits
            if doc in rows and rows[doc].scope == scope and (scope == PUBLIC or rows[doc].owner_id == user_id)
        ]
        found.sort(key=lambda hit: hit.score, reverse=True)
        return found

    async def _public_hits(self, query: str, limit: int) -> list[tuple[int, float]]:
        """The knowledge base's ranking: lexical, fused with dense vectors when they are configured."""
        if self.dense is not None:
            return await self.dense.search(self.public_index, query, limit)
        return self.public_index.search(query, limit)

    async def search_public(self, query: str, *, limit: int) -> list[RetrievedMemory]:
        """The knowledge base's best `limit` hits, best first."""
        await self.refresh()
        hits = await self._public_hits(query, limit)
        async with self.db.read() as db:
            rows = await repo.get_many(db, [doc for doc, _ in hits])
        return [RetrievedMemory(rows[doc], PUBLIC, score) for doc, score in hits if doc in rows]

    def explain(self, query: str) -> dict[str, Any]:
        """How the knowledge-base index reads a query: its normalised form and weighted terms."""
        return analyze(query, self.public_index)

    async def get_public(self, memory_id: int) -> Memory:
        async with self.db.read() as db:
            return await self._public_row(db, memory_id)

    async def list_public(
        self, *, offset: int, limit: int, category: str | None = None, text: str | None = None
    ) -> tuple[list[Memory], int]:
        """One page of the knowledge base in id order, and how many entries match in all."""
        async with self.db.read() as db:
            return await repo.page(
                db, scope=PUBLIC, owner_id="", offset=offset, limit=limit, category=category, text=text
            )

    async def iter_public(self, *, batch: int = 1000) -> AsyncIterator[list[Memory]]:
        """The whole knowledge base in id order, a batch per short read (no transaction held open)."""
        after = 0
        while True:
            async with self.db.read() as db:
                rows = await repo.list_for_owner(db, scope=PUBLIC, owner_id="", after_id=after, limit=batch)
            if rows:
                yield rows
            if len(rows) < batch:
                return
            after = rows[-1].id

    async def list_private(self, user_id: str, *, offset: int, limit: int) -> tuple[list[Memory], int]:
        """One page of a user's private memories, newest first, and their total."""
        async with self.db.read() as db:
            return await repo.page(
                db, scope=PRIVATE, owner_id=user_id, offset=offset, limit=limit, newest_first=True
            )

    async def probe(self) -> None:
        """Health check: the index answers and the memory table is readable."""
        self.public_index.search("健康检查", 1)
        async with self.db.read() as db:
            await repo.count(db, scope=PUBLIC)
