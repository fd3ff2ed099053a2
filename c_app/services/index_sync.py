"""The in-process search indexes over the memories table, kept in step with every replica's writes.

public  - the knowledge base: one index per process, built at start;
private - one index per user, built on first use and kept in an LRU cache;
chat    - likewise.

Every write to the memories table goes through `writing()` and is reported with `applied()`, so
this process sees its own writes at once; every process follows the append-only `memory_changes`
log (at most every `index_refresh_interval` seconds), so another replica's write is searchable
here within a second. Sequence numbers skipped over (a transaction still committing) are waited
for a while; this process's own log entries are skipped when read back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ..config import Settings
from ..db import memories as repo
from ..db.engine import Database
from ..db.memories import PUBLIC
from ..db.models import Memory
from ..retrieval import LexicalIndex, analyze
from .dense_search import DenseSearch

logger = logging.getLogger(__name__)

_LOAD_BATCH = 5000
_GAP_TTL = 10.0  # seconds a missing change sequence number is waited for (a transaction still committing)


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


async def iter_scope(db: Database, *, scope: str, owner_id: str, batch: int = 1000) -> AsyncIterator[list[Memory]]:
    """One owner's memories of a scope in id order, a batch per short read (no transaction held open)."""
    after = 0
    while True:
        async with db.read() as session:
            rows = await repo.list_for_owner(session, scope=scope, owner_id=owner_id, after_id=after, limit=batch)
        if rows:
            yield rows
        if len(rows) < batch:
            return
        after = rows[-1].id


class IndexSync:
    def __init__(self, db: Database, settings: Settings, dense: DenseSearch | None = None) -> None:
        self.db = db
        self.settings = settings
        self.public_index = LexicalIndex()
        # Optional dense retrieval over the knowledge base (EMBEDDING_BASE_URL).
        self.dense = dense
        # Kept current only once `start` has loaded it (a one-shot CLI import has no use for it).
        self._public_loaded = False
        self._user_indexes: OrderedDict[tuple[str, str], LexicalIndex] = OrderedDict()
        self._last_seq = 0
        self._gaps: dict[int, float] = {}
        # Change-log entries this process wrote itself (and indexed at once): skipped when read back.
        self._own_seqs: set[int] = set()
        self._last_poll = 0.0
        self._refresh_lock = asyncio.Lock()

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the public index from the database (and start the embedding worker, if any)."""
        async with self.db.read() as session:
            self._last_seq = await repo.last_change(session)
        async for rows in iter_scope(self.db, scope=PUBLIC, owner_id="", batch=_LOAD_BATCH):
            for row in rows:
                self.public_index.upsert(row.id, *index_fields(row))
            await asyncio.sleep(0)
        self._last_poll = time.monotonic()
        self._public_loaded = True
        logger.info("public index loaded: %d entries", len(self.public_index))
        if self.dense is not None:
            await self.dense.start()

    async def stop(self) -> None:
        if self.dense is not None:
            await self.dense.stop()

    # -- writes -----------------------------------------------------------------------------------

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncSession]:
        """A write transaction on the memories table whose change-log entries this process will not
        read back (report the rows with `applied` once it has committed)."""
        async with self.db.transaction() as session:
            yield session
        self._own_seqs.update(repo.own_change_seqs(session))

    def applied(self, rows: Iterable[Memory], removed: Iterable[Memory] = ()) -> None:
        """Reflect this process's own committed writes at once (read-your-writes)."""
        rows, removed = list(rows), list(removed)
        for row in rows:
            index = self._loaded(row.scope, row.owner_id)
            if index is not None:
                index.upsert(row.id, *index_fields(row))
        for row in removed:
            index = self._loaded(row.scope, row.owner_id)
            if index is not None:
                index.remove(row.id)
        if self.dense is not None and self._public_loaded:
            self.dense.schedule(rows, removed)

    # -- reads ------------------------------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> None:
        """Apply other processes' memory writes logged since the last refresh."""
        if not force and time.monotonic() - self._last_poll < self.settings.index_refresh_interval:
            return
        async with self._refresh_lock:
            if not force and time.monotonic() - self._last_poll < self.settings.index_refresh_interval:
                return
            await self._poll_changes()
            self._last_poll = time.monotonic()

    async def public_hits(self, query: str, limit: int) -> list[tuple[int, float]]:
        """The knowledge base's ranking: lexical, fused with dense vectors when they are configured
        (call `refresh` first to see other replicas' writes)."""
        if self.dense is not None:
            return await self.dense.search(self.public_index, query, limit)
        return self.public_index.search(query, limit)

    async def user_hits(self, scope: str, owner_id: str, query: str, limit: int) -> list[tuple[int, float]]:
        """One user's ranking in the private or chat scope (the index is built on first use)."""
        index = self._loaded(scope, owner_id)
        if index is None:
            index = LexicalIndex()
            async for rows in iter_scope(self.db, scope=scope, owner_id=owner_id):
                for row in rows:
                    index.upsert(row.id, *index_fields(row))
            self._user_indexes[(scope, owner_id)] = index
            while len(self._user_indexes) > self.settings.user_index_cache_size:
                self._user_indexes.popitem(last=False)
        return index.search(query, limit)

    def explain(self, query: str) -> dict[str, Any]:
        """How the knowledge-base index reads a query: its normalised form and weighted terms."""
        return analyze(query, self.public_index)

    async def probe(self) -> None:
        """Health check: the index answers and the memory table is readable."""
        self.public_index.search("健康检查", 1)
        async with self.db.read() as session:
            await repo.count(session, scope=PUBLIC)

    # -- the change log ---------------------------------------------------------------------------

    def _loaded(self, scope: str, owner_id: str) -> LexicalIndex | None:
        """The loaded index holding this scope and owner, if any (a user's is marked recently used)."""
        if scope == PUBLIC:
            return self.public_index if self._public_loaded else None
        key = (scope, owner_id)
        index = self._user_indexes.get(key)
        if index is not None:
            self._user_indexes.move_to_end(key)
        return index

    async def _poll_changes(self) -> None:
        now = time.monotonic()
        self._gaps = {seq: seen for seq, seen in self._gaps.items() if now - seen < _GAP_TTL}
        # Own entries right after the last applied one need not be read back at all (a bulk import).
        while self._last_seq + 1 in self._own_seqs:
            self._last_seq += 1
            self._own_seqs.discard(self._last_seq)
        async with self.db.read() as session:
            changes = await repo.changes_since(session, self._last_seq, also=list(self._gaps))
            if not changes:
                return
            foreign = [c for c in changes if c.seq not in self._own_seqs]
            rows = await repo.get_many(session, sorted({c.memory_id for c in foreign})) if foreign else {}
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
            index = self._loaded(change.scope, change.owner_id)
            if index is None:
                continue
            row = rows.get(change.memory_id)
            if row is None:
                index.remove(change.memory_id)
            else:
                index.upsert(row.id, *index_fields(row))
        if self.dense is not None and self._public_loaded:
            self.dense.schedule_ids(c.memory_id for c in foreign if c.scope == PUBLIC)
