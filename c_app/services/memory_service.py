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
from collections.abc import Iterable
from typing import Any

from ..config import Settings
from ..db import memories as repo
from ..db.engine import Database
from ..db.memories import CHAT, PRIVATE, PUBLIC, RetrievedMemory
from ..db.models import Memory
from ..retrieval import DEFAULT_ANSWER_THRESHOLD, LexicalIndex

logger = logging.getLogger(__name__)

_LOAD_BATCH = 5000
_GAP_TTL = 10.0  # seconds a missing change sequence number is waited for (a transaction still committing)


def index_fields(memory: Memory) -> tuple[list[str], str]:
    """What a memory is matched on: its questions first, its title and content as the body."""
    if memory.question:
        questions = [memory.question, *[q for q in memory.similar_questions if q]]
        body = f"{memory.title}\n{memory.content}" if memory.title else memory.content
        return questions, body
    return [memory.content], memory.title


class MemoryService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.answer_threshold = (
            settings.answer_threshold if settings.answer_threshold is not None else DEFAULT_ANSWER_THRESHOLD
        )
        self.public_index = LexicalIndex()
        self._user_indexes: OrderedDict[tuple[str, str], LexicalIndex] = OrderedDict()
        self._last_seq = 0
        self._gaps: dict[int, float] = {}
        self._last_poll = 0.0
        self._refresh_lock = asyncio.Lock()

    # -- start-up and cross-process sync ------------------------------------------------------

    async def start(self) -> None:
        """Build the public index from the database."""
        async with self.db.read() as db:
            self._last_seq = await repo.last_change(db)
        after = 0
        while True:
            async with self.db.read() as db:
                rows = await repo.list_for_owner(db, scope=PUBLIC, owner_id="", after_id=after, limit=_LOAD_BATCH)
            for row in rows:
                self.public_index.upsert(row.id, *index_fields(row))
            if len(rows) < _LOAD_BATCH:
                break
            after = rows[-1].id
            await asyncio.sleep(0)
        self._last_poll = time.monotonic()
        logger.info("public index loaded: %d entries", len(self.public_index))

    async def refresh(self, *, force: bool = False) -> None:
        """Apply other processes' memory writes logged since the last refresh."""
        if not force and time.monotonic() - self._last_poll < self.settings.index_refresh_interval:
            return
        async with self._refresh_lock:
            if not force and time.monotonic() - self._last_poll < self.settings.index_refresh_interval:
                return
            await self._poll_changes()
            self._last_poll = time.monotonic()

    async def _poll_changes(self) -> None:
        now = time.monotonic()
        self._gaps = {seq: seen for seq, seen in self._gaps.items() if now - seen < _GAP_TTL}
        async with self.db.read() as db:
            changes = await repo.changes_since(db, self._last_seq, also=list(self._gaps))
            if not changes:
                return
            rows = await repo.get_many(db, sorted({c.memory_id for c in changes}))
        for change in changes:
            self._gaps.pop(change.seq, None)
        # A sequence number skipped over may belong to a transaction that has not committed yet.
        seen = {c.seq for c in changes}
        top = max(seen)
        for seq in range(self._last_seq + 1, top + 1):
            if seq not in seen:
                self._gaps[seq] = now
        self._last_seq = max(self._last_seq, top)
        for change in changes:
            index = self._index_for(change.scope, change.owner_id, create=False)
            if index is None:
                continue
            row = rows.get(change.memory_id)
            if row is None:
                index.remove(change.memory_id)
            else:
                index.upsert(row.id, *index_fields(row))

    def _index_for(self, scope: str, owner_id: str, *, create: bool) -> LexicalIndex | None:
        if scope == PUBLIC:
            return self.public_index
        key = (scope, owner_id)
        index = self._user_indexes.get(key)
        if index is not None:
            self._user_indexes.move_to_end(key)
        return index

    async def _user_index(self, scope: str, owner_id: str) -> LexicalIndex:
        key = (scope, owner_id)
        index = self._user_indexes.get(key)
        if index is not None:
            self._user_indexes.move_to_end(key)
            return index
        async with self.db.read() as db:
            rows = await repo.list_for_owner(db, scope=scope, owner_id=owner_id)
        index = LexicalIndex()
        for row in rows:
            index.upsert(row.id, *index_fields(row))
        self._user_indexes[key] = index
        while len(self._user_indexes) > self.settings.user_index_cache_size:
            self._user_indexes.popitem(last=False)
        return index

    def _applied(self, rows: Iterable[Memory], removed: Iterable[Memory] = ()) -> None:
        """Reflect this process's own committed writes at once (read-your-writes)."""
        for row in rows:
            index = self._index_for(row.scope, row.owner_id, create=False)
            if index is not None:
                index.upsert(row.id, *index_fields(row))
        for row in removed:
            index = self._index_for(row.scope, row.owner_id, create=False)
            if index is not None:
                index.remove(row.id)

    # -- writes ---------------------------------------------------------------------------------

    async def add_private(self, user_id: str, content: str, metadata: dict[str, Any] | None = None) -> Memory:
        meta = dict(metadata or {})
        title = str(meta.get("title", ""))[:500]
        category = str(meta.get("category", ""))[:100]
        async with self.db.transaction() as db:
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
        async with self.db.transaction() as db:
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
        """Insert or update knowledge-base entries (matched on external_id). Returns (created, updated)."""
        created: list[Memory] = []
        updated: list[Memory] = []
        async with self.db.transaction() as db:
            ext_ids = [e["external_id"] for e in entries if e.get("external_id")]
            existing = await repo.by_external_ids(db, ext_ids, scope=PUBLIC, owner_id="")
            for entry in entries:
                fields = {
                    "title": entry.get("title", ""),
                    "category": entry.get("category", ""),
                    "question": entry.get("question", ""),
                    "similar_questions": list(entry.get("similar_questions") or []),
                    "content": entry.get("answer") or entry.get("content") or "",
                    "meta": dict(entry.get("metadata") or {}),
                }
                row = existing.get(entry.get("external_id") or "")
                if row is None:
                    created.append(
                        await repo.add(
                            db, scope=PUBLIC, owner_id="", external_id=entry.get("external_id"), **fields
                        )
                    )
                else:
                    for key, value in fields.items():
                        setattr(row, key, value)
                    await repo.touch(db, row)
                    updated.append(row)
        self._applied([*created, *updated])
        return len(created), len(updated)

    # -- reads ----------------------------------------------------------------------------------

    async def search(self, user_id: str, query: str, *, limit: int) -> list[RetrievedMemory]:
        """The best `limit` hits of each scope, merged and sorted by score (best first)."""
        await self.refresh()
        hits: list[tuple[str, int, float]] = []
        for scope in (PRIVATE, CHAT):
            index = await self._user_index(scope, user_id)
            hits.extend((scope, doc, score) for doc, score in index.search(query, limit))
        hits.extend((PUBLIC, doc, score) for doc, score in self.public_index.search(query, limit))
        async with self.db.read() as db:
            rows = await repo.get_many(db, [doc for _, doc, _ in hits])
        found = [
            RetrievedMemory(rows[doc], scope, score)
            for scope, doc, score in hits
            if doc in rows and rows[doc].scope == scope and (scope == PUBLIC or rows[doc].owner_id == user_id)
        ]
        found.sort(key=lambda hit: hit.score, reverse=True)
        return found

    async def probe(self) -> None:
        """Health check: the index answers and the memory table is readable."""
        self.public_index.search("健康检查", 1)
        async with self.db.read() as db:
            await repo.count(db, scope=PUBLIC)
