"""The search indexes over the memories table, kept in step with every replica's writes.

public  - the knowledge base: one in-memory index per process, started from the snapshot in the
          database plus the change log after it (or built from the rows), kept current by the log;
private - one user's memories, ranked per request from that user's rows and the analysed terms
chat    - stored with each row (`stored_terms`): nothing per user is kept in the process, so
          there is no first-query build and no memory that grows with the number of users.

Every write to the memories table goes through `writing()` and is reported with `applied()`, so
this process sees its own writes at once; every process follows the append-only `memory_changes`
log (at most every `index_refresh_interval` seconds), so another replica's write is searchable
here within a second. Sequence numbers skipped over (a transaction still committing) are waited
for a while; this process's own log entries are skipped when read back.

Snapshots. After a build from the rows, and whenever the log has moved INDEX_SNAPSHOT_CHANGES
past the stored snapshot, one replica at a time (a lease on the snapshot's row, db/snapshots.py)
writes the public index as plain arrays (retrieval/snapshot.py) with the sequence number it
covers. A starting replica loads it and replays the log after that number; a snapshot that is
corrupt (checksum, format, shapes, ranges), foreign (another analyzer, a sequence number this
log never reached), stale (the log after it is gone) or that disagrees with the table's entry
count after the replay is rebuilt from the rows and replaced, never used.

Off the event loop. Analysing text (OpenCC, jieba) and scoring are CPU work: every index build,
write and search runs in a worker thread, at most INDEX_THREADS at once (a CapacityLimiter; long
queries have a lane of their own), so one long text cannot hold up every other request. A write
the event loop reports (`applied`, the change log) is only queued on the public index
(`LexicalIndex.defer`): the next search of that index applies it first, in its thread, so a write
is still seen by the next read; `apply` also waits while a worker thread does the work, so a
writer pays for its own writes and bulk writes cannot pile up. The index has its own lock (in
`LexicalIndex`): the text analysis runs outside it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar, cast

import anyio
import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncSession

from ..config import Settings
from ..db import memories as repo
from ..db import snapshots
from ..db.engine import Database
from ..db.memories import PUBLIC
from ..db.models import Memory
from ..retrieval import LexicalIndex, analyze, snapshot, stored
from ..retrieval.index import Fields, analyse
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
SNAPSHOT_LEASE = timedelta(minutes=5)  # a writer that stalls longer loses the right to write

T = TypeVar("T")


def _fields(question: str, similar_questions: list[str] | None, content: str, title: str) -> Fields:
    if question:
        return [question, *[q for q in similar_questions or [] if q]], title
    return [content], title


def index_fields(memory: Memory) -> tuple[list[str], str]:
    """What a memory is matched on: (questions, secondary text).

    A knowledge-base entry or a past exchange is matched on its question and similar questions,
    with its title as secondary text; its answer is not indexed. Customers ask in question words,
    and indexing ~150-character answers made nearly every query touch nearly every entry: at
    100,000 entries it cut the index build 6x and tripled query time (bench/README.md, Scale).
    A private memory is a statement, matched on its content.
    """
    return _fields(memory.question, memory.similar_questions, memory.content, memory.title)


def stored_terms(fields: Fields) -> bytes:
    """A row's analysed terms as stored in `memories.tokens` (`retrieval.stored`; a write that
    changes the row's text without storing new terms clears them: `db.memories.touch`)."""
    return stored.encode(analyse(*fields))


def _rank_rows(
    rows: list[Any], texts: dict[int, Fields], scopes: list[str], query: str, limit: int
) -> tuple[list[tuple[str, int, float]], dict[int, bytes]]:
    """Rank one user's rows per scope (worker thread); rows without usable stored terms are
    analysed from `texts`, and their terms returned, to store."""
    fresh: dict[int, bytes] = {}
    docs: dict[str, list[tuple[int, bytes]]] = {scope: [] for scope in scopes}
    for row in rows:
        blob = row.tokens
        if not stored.usable(blob):
            if row.id not in texts:  # removed since it was read
                continue
            blob = fresh[row.id] = stored_terms(texts[row.id])
        docs[row.scope].append((row.id, blob))
    ranked = [
        (scope, doc, score) for scope in scopes for doc, score in stored.rank(docs[scope], query, limit)
    ]
    return ranked, fresh


class _Stored(NamedTuple):
    id: int
    scope: str
    tokens: bytes | None


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
        self._replaying = False
        # How the public index started: "snapshot", "rebuilt" (and why: `snapshot_rejected`).
        self.started_from = ""
        self.snapshot_rejected = ""
        self._snapshot_seq = -1  # the change-log point of the newest snapshot this process knows of
        self._snapshot_task: asyncio.Task[bool] | None = None
        # Unforced snapshots wait INDEX_SNAPSHOT_INTERVAL from start (monotonic time starts at boot, not 0).
        self._snapshot_tried = time.monotonic()
        self._holder = uuid.uuid4().hex
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
        """Load the public index (a snapshot and the log after it, or the rows), then start the
        embedding worker, if any."""
        if not await self._start_from_snapshot():
            await self._build_public()
            self.started_from = "rebuilt"
        self._last_poll = time.monotonic()
        logger.info("public index loaded (%s): %d entries", self.started_from, len(self.public_index))
        self._maybe_snapshot(force=self.started_from == "rebuilt")
        if self.dense is not None:
            await self.dense.start()

    async def _build_public(self) -> None:
        self.public_index = LexicalIndex()
        self._gaps = {}
        async with self.db.read() as session:
            self._last_seq = await repo.last_change(session)
        async for rows in iter_scope(self.db, scope=PUBLIC, owner_id="", batch=_LOAD_BATCH):
            await self._off_loop(
                _upsert_all, self.public_index, [(row.id, index_fields(row)) for row in rows]
            )
        self._public_loaded = True

    def _snapshots_on(self) -> bool:
        return self.settings.index_snapshot_changes > 0

    async def _start_from_snapshot(self) -> bool:
        """The stored snapshot, checked, and the change log after it; False when there is none or
        it is not to be trusted (`snapshot_rejected` says why)."""
        if not self._snapshots_on():
            return False
        async with self.db.read() as session:
            row = await snapshots.get(session, PUBLIC)
            last = await repo.last_change(session)
            oldest = await repo.first_change(session)
        if row is None or row.data is None:
            return False
        self._snapshot_seq = row.seq
        if row.version != snapshot.FORMAT_VERSION:
            return self._reject(f"format version {row.version}")
        if row.seq > last:
            return self._reject(f"covers change {row.seq}, past this log's last ({last})")
        if oldest is not None and oldest > row.seq + 1:
            return self._reject(f"the log after change {row.seq} is gone (oldest kept: {oldest})")
        try:
            index = await self._off_loop(snapshot.load, row.data, row.checksum)
        except snapshot.SnapshotError as exc:
            return self._reject(str(exc))
        self.public_index, self._last_seq, self._gaps = index, row.seq, {}
        self._public_loaded = True
        self._replaying = True
        try:
            while True:  # the log after the snapshot, in pages
                before = self._last_seq
                await self._poll_changes()
                if self._last_seq == before:
                    break
        finally:
            self._replaying = False
        await self._off_loop(self.public_index.settle)
        async with self.db.read() as session:
            entries = await repo.count(session, scope=PUBLIC)
        if entries != len(self.public_index):
            reason = f"{len(self.public_index)} entries after the replay, the table has {entries}"
            self.public_index, self._public_loaded = LexicalIndex(), False
            return self._reject(reason)
        self.started_from = "snapshot"
        return True

    def _reject(self, reason: str) -> bool:
        logger.warning("index snapshot not used (%s): rebuilding from the database", reason)
        self.snapshot_rejected = reason
        return False

    def _snapshot_point(self) -> int:
        """The change-log sequence number the public index covers in full (gaps still awaited excluded)."""
        return min([self._last_seq, *[gap - 1 for gap in self._gaps]])

    def _maybe_snapshot(self, *, force: bool = False) -> None:
        """Save a snapshot in the background when the log has moved far enough past the last one
        (force: the stored one was rejected or missing; replace it whatever it covers)."""
        if not self._snapshots_on() or not self._public_loaded:
            return
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        if len(self.public_index) < self.settings.index_snapshot_min_entries:
            return
        if not force:
            if self._snapshot_point() - self._snapshot_seq < self.settings.index_snapshot_changes:
                return
            if time.monotonic() - self._snapshot_tried < self.settings.index_snapshot_interval:
                return
        self._snapshot_tried = time.monotonic()
        self._snapshot_task = asyncio.create_task(self.save_snapshot(force=force))

    async def save_snapshot(self, *, force: bool = False) -> bool:
        """Write the public index as the snapshot if this replica gets the writer's lease (and,
        unless forced, the stored one is INDEX_SNAPSHOT_CHANGES behind); True when written."""
        seq = self._snapshot_point()
        min_gain = None if force else self.settings.index_snapshot_changes
        try:
            async with self.db.transaction() as session:
                claimed = await snapshots.claim(
                    session, PUBLIC, holder=self._holder, seq=seq, min_gain=min_gain, ttl=SNAPSHOT_LEASE
                )
                if not claimed:
                    self._snapshot_seq = max(
                        self._snapshot_seq, await snapshots.stored_seq(session, PUBLIC) or 0
                    )
            if not claimed:
                return False
            try:
                blob, checksum = await self._off_loop(snapshot.dump, self.public_index)
                async with self.db.transaction() as session:
                    stored = await snapshots.store(
                        session,
                        PUBLIC,
                        holder=self._holder,
                        version=snapshot.FORMAT_VERSION,
                        seq=seq,
                        entries=len(self.public_index),
                        checksum=checksum,
                        data=blob,
                    )
            except BaseException:
                async with self.db.transaction() as session:
                    await snapshots.release(session, PUBLIC, holder=self._holder)
                raise
        except Exception:
            logger.exception("could not save the index snapshot")
            return False
        if stored:
            self._snapshot_seq = seq
            logger.info(
                "index snapshot saved: %d entries, change %d, %d bytes",
                len(self.public_index),
                seq,
                len(blob),
            )
        return stored

    @property
    def loaded(self) -> bool:
        """The public index is built and followed (the replica's readiness, GET /ready)."""
        return self._public_loaded

    async def stop(self) -> None:
        if self._snapshot_task is not None:
            await asyncio.gather(self._snapshot_task, return_exceptions=True)  # never left half-written
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

    def committed(
        self, session: AsyncSession, rows: Iterable[Memory], removed: Iterable[Memory] = ()
    ) -> None:
        """A write to the memories table made in another service's transaction (`writing`, for
        one of this service's own) has committed: its change-log entries are this process's own,
        and its rows are reflected (`applied`)."""
        self._own_seqs.update(repo.own_change_seqs(session))
        self.applied(rows, removed)

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
        """Queue a write (fields None: a removal) on the public index once it is loaded, and
        return it (a user's memories are read per request: nothing to update)."""
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
        self._maybe_snapshot()

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
        """The user's best `limit` in each of `scopes`, ranked from their rows, then `public_hits`,
        as (scope, doc, score): one trip to a worker thread for all of them."""
        scopes = list(scopes)
        rows: list[Any] = []
        texts: dict[int, Fields] = {}
        if scopes:
            async with self.db.read() as session:
                rows = await repo.ranking_rows(session, scopes=scopes, owner_id=owner_id)
                # Rows whose terms are missing, another analyzer's or damaged: their text, to analyse now.
                stale = {row.id for row in rows if not stored.usable(row.tokens)}
                if not stored.valid_values([(row.id, row.tokens) for row in rows if row.id not in stale]):
                    stale = {row.id for row in rows}
                    rows = [_Stored(row.id, row.scope, None) for row in rows]
                if stale:
                    found = await repo.get_many(session, sorted(stale))
                    texts = {m.id: index_fields(m) for m in found.values()}
        pool = max(limit * 4, 20) if self.dense is not None else limit  # DenseSearch.search's pool

        def search_all(
            query: str,
        ) -> tuple[list[tuple[str, int, float]], dict[int, bytes], list[tuple[int, float]]]:
            mine, fresh = _rank_rows(rows, texts, scopes, query, limit)
            return mine, fresh, self.public_index.search(query, pool)

        ranked, fresh, public = await self._searching(search_all, query)
        if fresh:
            await self._store_terms(fresh)
        if self.dense is not None:
            public = await self.dense.search(
                cast(LexicalIndex, _Ranked(self.public_index, public)), query, limit
            )
        return [*ranked, *[(PUBLIC, doc, score) for doc, score in public]]

    async def terms(self, fields: Fields) -> bytes:
        """`stored_terms(fields)`, analysed in a worker thread (for a write to store with its row)."""
        return await self._off_loop(stored_terms, fields)

    async def _store_terms(self, fresh: dict[int, bytes]) -> None:
        """Keep the terms of rows analysed on a search (written before terms were stored, or by
        another analyzer), so the next search reads them."""
        try:
            async with self.db.transaction() as session:
                await repo.store_tokens(session, fresh)
        except Exception:
            logger.warning("could not store the analysed terms of %d memories", len(fresh), exc_info=True)

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
        """The loaded index holding this scope and owner: the public one, once loaded."""
        if scope == PUBLIC and self._public_loaded:
            return self.public_index
        return None

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
        if self.dense is not None and self._public_loaded and not self._replaying:
            self.dense.schedule_ids(c.memory_id for c in foreign if c.scope == PUBLIC)
