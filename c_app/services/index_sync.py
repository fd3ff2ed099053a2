"""The in-process search indexes over the memories table, kept in step with every replica's writes.

public  - the knowledge base: one index per process, built at start;
private - one index per user, built on first use and kept in an LRU cache;
chat    - likewise.

Every write to the memories table goes through `writing()` and is reported with `applied()`, so
this process sees its own writes at once; every process follows the append-only `memory_changes`
log (at most every `index_refresh_interval` seconds), so another replica's write is searchable
here within a second. Sequence numbers skipped over (a transaction still committing) are waited
for a while; this process's own log entries are skipped when read back.

Off the event loop. Analysing text (OpenCC, jieba) and scoring are CPU work: every index build,
write and search runs in a worker thread, at most INDEX_THREADS at once (a CapacityLimiter; long
queries have a lane of their own), so one long text cannot hold up every other request. A write
the event loop reports (`applied`, the change log) is only queued on its index
(`LexicalIndex.defer`): the next search of that index applies it first, in its thread, so a write
is still seen by the next read; `apply` also waits while a worker thread does the work, so a
writer pays for its own writes and bulk writes cannot pile up. Each index has its own lock (in
`LexicalIndex`): the text analysis runs outside it, so threads only wait for one another over the
same index's postings and scoring.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncSession

from ..config import Settings
from ..db import memories as repo
from ..db.engine import Database
from ..db.memories import PUBLIC
from ..db.models import Memory
from ..retrieval import LexicalIndex, analyze
from ..retrieval.index import Fields
from .dense_search import DenseSearch

logger = logging.getLogger(__name__)

_LOAD_BATCH = 5000
_GAP_TTL = 10.0  # seconds a missing change sequence number is waited for (a transaction still committing)
# Worker threads doing index work at once. Tokenising is pure Python and holds the GIL, which the
# event loop needs too: each busy worker takes a share of it (CPython hands it over every 5 ms),
# so more workers would only slow the loop down. Two let numpy's scoring (which releases the GIL)
# overlap another request's tokenising on a two-core machine.
INDEX_THREADS = 2
# A query longer than this (a customer's question is far shorter) is searched in a lane of its
# own, one thread: 2,000 characters take up to ~0.15 s to analyse, and a burst of them must not
# queue every ordinary search behind it. /health's probe has a thread of its own too.
LONG_QUERY_CHARS = 256

T = TypeVar("T")


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


def _upsert_all(index: LexicalIndex, docs: list[tuple[int, Fields]]) -> None:
    for doc_id, fields in docs:
        index.upsert(doc_id, *fields)


class _Ranked:
    """What `DenseSearch.search` reads of the lexical index, with the ranking computed beforehand
    in a worker thread: the ranking, and which docs the index holds."""

    def __init__(self, index: LexicalIndex, ranked: list[tuple[int, float]]) -> None:
        self.index = index
        self.ranked = ranked

    def search(self, query: str, limit: int = 5) -> list[tuple[int, float]]:
        return self.ranked[:limit]

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.index


async def iter_scope(
    db: Database, *, scope: str, owner_id: str, batch: int = 1000
) -> AsyncIterator[list[Memory]]:
    """One owner's memories of a scope in id order, a batch per short read (no transaction held open)."""
    after = 0
    while True:
        async with db.read() as session:
            rows = await repo.list_for_owner(
                session, scope=scope, owner_id=owner_id, after_id=after, limit=batch
            )
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
        # Users' indexes being built: the writes reported meanwhile, one list per build.
        self._building: dict[tuple[str, str], list[list[tuple[int, Fields | None]]]] = {}
        self._last_seq = 0
        self._gaps: dict[int, float] = {}
        # Change-log entries this process wrote itself (and indexed at once): skipped when read back.
        self._own_seqs: set[int] = set()
        self._last_poll = 0.0
        self._refresh_lock = asyncio.Lock()
        self._limiter = anyio.CapacityLimiter(INDEX_THREADS)
        self._long_limiter = anyio.CapacityLimiter(1)
        self._probe_limiter = anyio.CapacityLimiter(1)

    async def _off_loop(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` in a worker thread, at most INDEX_THREADS at once."""
        return await anyio.to_thread.run_sync(work, *args, limiter=self._limiter)

    async def _search(self, index: LexicalIndex, query: str, limit: int) -> list[tuple[int, float]]:
        """``index.search`` in a worker thread: a long query in the long-query lane."""
        return await self._searching(index.search, query, limit)

    async def _searching(self, work: Callable[..., T], query: str, *args: Any) -> T:
        limiter = self._long_limiter if len(query) > LONG_QUERY_CHARS else self._limiter
        return await anyio.to_thread.run_sync(work, query, *args, limiter=limiter)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the public index from the database (and start the embedding worker, if any)."""
        async with self.db.read() as session:
            self._last_seq = await repo.last_change(session)
        async for rows in iter_scope(self.db, scope=PUBLIC, owner_id="", batch=_LOAD_BATCH):
            await self._off_loop(
                _upsert_all, self.public_index, [(row.id, index_fields(row)) for row in rows]
            )
        self._last_poll = time.monotonic()
        self._public_loaded = True
        logger.info("public index loaded: %d entries", len(self.public_index))
        if self.dense is not None:
            await self.dense.start()

    @property
    def loaded(self) -> bool:
        """The public index is built and followed (the replica's readiness, GET /ready)."""
        return self._public_loaded

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
        """Reflect this process's own committed writes (read-your-writes): queued on their indexes,
        applied by the next search of each, in a worker thread (see the module docstring)."""
        self._queue(list(rows), list(removed))

    async def apply(self, rows: Iterable[Memory], removed: Iterable[Memory] = ()) -> None:
        """`applied`, and wait while a worker thread applies the writes to their indexes."""
        for index in self._queue(list(rows), list(removed)):
            await self._off_loop(index.settle)

    def _queue(self, rows: list[Memory], removed: list[Memory]) -> list[LexicalIndex]:
        touched: dict[int, LexicalIndex] = {}
        for row, fields in [*[(row, index_fields(row)) for row in rows], *[(row, None) for row in removed]]:
            index = self._deliver(row.scope, row.owner_id, row.id, fields)
            if index is not None:
                touched[id(index)] = index
        if self.dense is not None and self._public_loaded:
            self.dense.schedule(rows, removed)
        return list(touched.values())

    def _deliver(self, scope: str, owner_id: str, doc_id: int, fields: Fields | None) -> LexicalIndex | None:
        """Queue a write (fields None: a removal) on the loaded index it belongs to, and on any of
        that user's indexes still being built; the loaded index, if any."""
        for missed in self._building.get((scope, owner_id), ()):
            missed.append((doc_id, fields))
        index = self._loaded(scope, owner_id)
        if index is not None:
            index.defer(doc_id, fields)
        return index

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

    async def lag(self) -> int:
        """Entries of the change log this process has not applied yet (c_app_index_lag_changes)."""
        async with self.db.read() as session:
            head = await repo.last_change(session)
        own = sum(1 for seq in self._own_seqs if seq > self._last_seq)  # applied already, read back later
        return max(0, head - self._last_seq - own)

    async def public_hits(self, query: str, limit: int) -> list[tuple[int, float]]:
        """The knowledge base's ranking: lexical, fused with dense vectors when they are configured
        (call `refresh` first to see other replicas' writes)."""
        if self.dense is not None:
            # DenseSearch.search asks the lexical index for this many (its pool) and fuses them.
            ranked = await self._search(self.public_index, query, max(limit * 4, 20))
            return await self.dense.search(
                cast(LexicalIndex, _Ranked(self.public_index, ranked)), query, limit
            )
        return await self._search(self.public_index, query, limit)

    async def hits(
        self, owner_id: str, scopes: Iterable[str], query: str, limit: int
    ) -> list[tuple[str, int, float]]:
        """`user_hits` of each of the user's `scopes`, then `public_hits`, as (scope, doc, score):
        one trip to a worker thread for all of them (each trip costs two thread wake-ups)."""
        indexes = [(scope, await self._user_index(scope, owner_id)) for scope in scopes]
        pool = max(limit * 4, 20) if self.dense is not None else limit  # DenseSearch.search's pool

        def search_all(query: str) -> tuple[list[tuple[str, int, float]], list[tuple[int, float]]]:
            mine = [
                (scope, doc, score) for scope, index in indexes for doc, score in index.search(query, limit)
            ]
            return mine, self.public_index.search(query, pool)

        ranked, public = await self._searching(search_all, query)
        if self.dense is not None:
            public = await self.dense.search(
                cast(LexicalIndex, _Ranked(self.public_index, public)), query, limit
            )
        return [*ranked, *[(PUBLIC, doc, score) for doc, score in public]]

    async def user_hits(self, scope: str, owner_id: str, query: str, limit: int) -> list[tuple[int, float]]:
        """One user's ranking in the private or chat scope (the index is built on first use)."""
        return await self._search(await self._user_index(scope, owner_id), query, limit)

    async def _user_index(self, scope: str, owner_id: str) -> LexicalIndex:
        index = self._loaded(scope, owner_id)  # (an empty index is falsy: compared with None)
        return index if index is not None else await self._build(scope, owner_id)

    async def _build(self, scope: str, owner_id: str) -> LexicalIndex:
        """A user's index from the database, then kept in the LRU cache. The rows are read in
        batches while other requests run: a write reported meanwhile is recorded and queued on
        the new index at the end (after every row read, so the newest version wins)."""
        key = (scope, owner_id)
        index = LexicalIndex()
        missed: list[tuple[int, Fields | None]] = []
        self._building.setdefault(key, []).append(missed)
        try:
            async for rows in iter_scope(self.db, scope=scope, owner_id=owner_id):
                await self._off_loop(_upsert_all, index, [(row.id, index_fields(row)) for row in rows])
        finally:
            others = [m for m in self._building[key] if m is not missed]
            if others:
                self._building[key] = others
            else:
                del self._building[key]
        for doc_id, fields in missed:
            index.defer(doc_id, fields)
        self._user_indexes[key] = index
        while len(self._user_indexes) > self.settings.user_index_cache_size:
            self._user_indexes.popitem(last=False)
        return index

    def explain(self, query: str) -> dict[str, Any]:
        """How the knowledge-base index reads a query: its normalised form and weighted terms.

        On the caller's thread (an admin's hit test): the query is analysed up to
        `MAX_TEXT_CHARS` only, and in linear time."""
        return analyze(query, self.public_index)

    async def probe(self) -> None:
        """Health check: the index answers and the memory table is readable. In its own worker
        thread, so a queue of searches waiting for INDEX_THREADS does not hold /health up."""
        await anyio.to_thread.run_sync(self.public_index.search, "健康检查", 1, limiter=self._probe_limiter)
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
            row = rows.get(change.memory_id)
            # Queued: the search this refresh comes before applies it, in its worker thread.
            self._deliver(
                change.scope, change.owner_id, change.memory_id, None if row is None else index_fields(row)
            )
        if self.dense is not None and self._public_loaded:
            self.dense.schedule_ids(c.memory_id for c in foreign if c.scope == PUBLIC)
