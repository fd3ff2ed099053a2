"""Dense vectors for the knowledge base, kept beside the lexical index (only with EMBEDDING_BASE_URL).

Vectors live in `memory_vectors` and in an in-memory `VectorStore`. At start the stored ones are
loaded; entries with none (or one computed from older text or another model) are embedded by a
background worker, which also embeds every written entry: writes never wait for the endpoint,
and a batch of imported entries becomes one batch of embedding calls. Other processes' writes
reach the worker through MemoryService's change-log polling; it reuses a vector another process
already stored for the same text.

On PostgreSQL the backlog found at start (entries without a current vector: a first start, a new
model) is one job for the whole fleet (`backfill`, queued by c_app/services/jobs.py with a queueing
lock): one replica's worker embeds it, the others load the vectors it stores (`_follow_backlog`),
so N replicas starting together call the endpoint once per entry, not N times. SQLite (one process)
embeds its backlog itself, as before.

The endpoint is optional at run time: when it is down, slow or failing, searches fall back to the
lexical ranking (logged once per outage) and the worker retries after a pause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import numpy as np

from ..config import Settings
from ..db import memories as repo
from ..db import vectors as vector_repo
from ..db.engine import Database
from ..db.memories import PUBLIC
from ..db.models import Memory
from ..privacy.pii import mask_text
from ..retrieval import LexicalIndex
from ..retrieval.dense import EmbeddingClient, EmbeddingError, VectorStore, fuse, text_hash

logger = logging.getLogger(__name__)

_LOAD_BATCH = 2000
_WORK_BATCH = 256  # entries taken by the worker at once (the client splits them into API batches)
_EMBED_CHARS = 2000


def embed_text(memory: Memory) -> str:
    """What an entry's vector is computed from: the question customers ask, else its title or text."""
    return (memory.question or memory.title or memory.content)[:_EMBED_CHARS]


class DenseSearch:
    def __init__(self, db: Database, settings: Settings, client: EmbeddingClient) -> None:
        self.db = db
        self.client = client
        self.model = client.model
        self.floor = settings.embedding_min_similarity
        # The customer's query leaves the process for the embeddings endpoint: personal data masked first.
        self.mask_query = settings.pii_masking
        self.store = VectorStore()
        self.retry_after = 10.0  # seconds the endpoint is left alone after a failure
        self._pending: set[int] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._down = False
        # PostgreSQL: the backlog at start is the fleet's job; this process follows what it stores.
        self.fleet_backfill = not settings.is_sqlite
        self.backlog: set[int] = set()
        self.follow_interval = 1.0  # seconds between loads of the vectors the fleet's job stored
        self.requeue_after = 60.0  # seconds of a backlog left unchanged before the job is asked again
        self.requeue: Callable[[], Awaitable[None]] | None = None  # set by the job service
        self._follower: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the stored vectors of the knowledge base; queue the entries that lack a current one."""
        after = 0
        while True:
            async with self.db.read() as db:
                batch = await vector_repo.for_scope(
                    db, scope=PUBLIC, owner_id="", after_id=after, limit=_LOAD_BATCH
                )
            for memory, stored in batch:
                if stored is not None and self._current(stored, memory):
                    self.store.upsert(memory.id, np.frombuffer(stored.vector, dtype="<f4"))
                else:
                    self._pending.add(memory.id)
            if len(batch) < _LOAD_BATCH:
                break
            after = batch[-1][0].id
        logger.info("dense vectors loaded: %d stored, %d to embed", len(self.store), len(self._pending))
        self._worker = asyncio.create_task(self._run(), name="dense-embedder")
        if self.fleet_backfill and self._pending:
            self.backlog, self._pending = self._pending, set()
            self._follower = asyncio.create_task(self._follow_backlog(), name="dense-backlog")
        elif self._pending:
            self._kick()

    async def stop(self) -> None:
        for task in (self._worker, self._follower):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._worker = self._follower = None
        await self.client.aclose()

    async def drain(self) -> None:
        """Wait until every queued entry has been embedded or given up on (tests, imports), and the
        backlog found at start has been embedded (by the fleet's job, on PostgreSQL)."""
        await self._idle.wait()
        while self.backlog and self._follower is not None and not self._follower.done():
            await asyncio.sleep(0.02)

    # -- writes ---------------------------------------------------------------------------------

    def schedule(self, rows: Iterable[Memory], removed: Iterable[Memory] = ()) -> None:
        """This process's committed writes: drop removed vectors now, embed written entries soon."""
        for row in removed:
            if row.scope == PUBLIC:
                self.store.remove(row.id)
                self._pending.discard(row.id)
        self.schedule_ids(row.id for row in rows if row.scope == PUBLIC)

    def schedule_ids(self, memory_ids: Iterable[int]) -> None:
        """Entries (public) that changed or may have: the worker re-reads them and acts."""
        before = len(self._pending)
        self._pending.update(memory_ids)
        if len(self._pending) > before:
            self._kick()

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                wait = self._down_until - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                ids = sorted(self._pending)[:_WORK_BATCH]
                self._pending.difference_update(ids)
                try:
                    await self._embed_entries(ids)
                except EmbeddingError as exc:
                    self._pending.update(ids)
                    self._failed(exc)
                except Exception:  # a database hiccup must not kill the worker
                    logger.exception("embedding %d entries failed", len(ids))
            self._idle.set()

    async def backfill(self) -> int:
        """Embed every public entry without a current vector (the fleet's job, run by one replica);
        returns how many were embedded. An endpoint failure is raised: the job engine retries."""
        after, embedded = 0, 0
        while True:
            async with self.db.read() as db:
                batch = await vector_repo.for_scope(
                    db, scope=PUBLIC, owner_id="", after_id=after, limit=_LOAD_BATCH
                )
            ids = [m.id for m, stored in batch if stored is None or not self._current(stored, m)]
            for start in range(0, len(ids), _WORK_BATCH):
                part = ids[start : start + _WORK_BATCH]
                embedded += await self._embed_entries(part)
                self.backlog.difference_update(part)
            if len(batch) < _LOAD_BATCH:
                break
            after = batch[-1][0].id
        logger.info("dense backfill: %d entries embedded", embedded)
        return embedded

    async def _follow_backlog(self) -> None:
        """Load the vectors the fleet's backfill stores for this process's backlog, until none is left.
        An entry written meanwhile is embedded by this process's own worker as usual."""
        changed = time.monotonic()
        while self.backlog:
            await asyncio.sleep(self.follow_interval)
            before = len(self.backlog)
            try:
                snapshot = sorted(self.backlog)
                for start in range(0, len(snapshot), _LOAD_BATCH):
                    part = snapshot[start : start + _LOAD_BATCH]
                    missing = await self._reuse(part)
                    self.backlog.difference_update(set(part) - {row.id for row in missing})
                if len(self.backlog) < before:
                    changed = time.monotonic()
                elif self.requeue is not None and time.monotonic() - changed > self.requeue_after:
                    changed = time.monotonic()
                    await self.requeue()  # the job failed for good, or was never taken: queued again
            except Exception:  # a database hiccup: tried again at the next interval
                logger.exception("loading the backfilled vectors failed")

    async def _reuse(self, ids: list[int]) -> list[Memory]:
        """Load the stored vectors of `ids` that are current (drop removed entries); returns the
        entries that still need one."""
        async with self.db.read() as db:
            rows = await repo.get_many(db, ids)
            stored = await vector_repo.get_many(db, ids)
        todo: list[Memory] = []
        for memory_id in ids:
            row = rows.get(memory_id)
            if row is None or row.scope != PUBLIC:
                self.store.remove(memory_id)
            elif memory_id in stored and self._current(stored[memory_id], row):
                self.store.upsert(memory_id, np.frombuffer(stored[memory_id].vector, dtype="<f4"))
            else:
                todo.append(row)
        return todo

    async def _embed_entries(self, ids: list[int]) -> int:
        todo = await self._reuse(ids)
        if not todo:
            return 0
        hashes = [text_hash(embed_text(row)) for row in todo]
        vectors = await self.client.embed([embed_text(row) for row in todo])
        self._recovered()
        records = [
            vector_repo.StoredVector(row.id, self.model, digest, vector.astype("<f4").tobytes())
            for row, digest, vector in zip(todo, hashes, vectors, strict=True)
        ]
        async with self.db.transaction() as db:
            await vector_repo.put_many(db, records, dims=vectors.shape[1])
        for row, vector in zip(todo, vectors, strict=True):
            self.store.upsert(row.id, vector)
        return len(todo)

    def _current(self, stored: vector_repo.StoredVector, memory: Memory) -> bool:
        return stored.model == self.model and stored.text_hash == text_hash(embed_text(memory))

    # -- reads ----------------------------------------------------------------------------------

    async def search(self, lexical: LexicalIndex, query: str, limit: int) -> list[tuple[int, float]]:
        """The lexical hits fused with the nearest vectors; the lexical hits alone if embedding fails."""
        pool = max(limit * 4, 20)
        lexical_hits = lexical.search(query, pool)
        if not len(self.store) or time.monotonic() < self._down_until:
            return lexical_hits[:limit]
        try:
            vector = (await self.client.embed([mask_text(query) if self.mask_query else query]))[0]
        except EmbeddingError as exc:
            self._failed(exc)
            return lexical_hits[:limit]
        self._recovered()
        # A vector may briefly outlive its entry's removal from the lexical index: only indexed ids.
        dense_hits = [(doc, cos) for doc, cos in self.store.search(vector, pool) if doc in lexical]
        return fuse(lexical_hits, dense_hits, floor=self.floor, limit=limit)

    # -- outage bookkeeping ---------------------------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        self._down_until = time.monotonic() + self.retry_after
        if not self._down:
            self._down = True
            logger.warning("embeddings endpoint failing, using lexical retrieval only: %s", exc)

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            logger.info("embeddings endpoint answering again; dense retrieval resumed")
