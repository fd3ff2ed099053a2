"""A customer's memory: private facts, past exchanges, and search over them and the knowledge base.

private - what the customer or an operator saved about the customer;
chat    - the customer's past exchanges, the newest CHAT_MEMORY_LIMIT kept.

Search ranks the knowledge base in its index and the user's memories from their rows and stored
terms (services/index_sync.py) and returns plain `Hit`s, the
form the engines and the wire formats take; the knowledge base itself is edited by
KnowledgeService.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ..config import Settings
from ..db import memories as repo
from ..db.memories import CHAT, PRIVATE, PUBLIC
from ..db.models import Memory
from ..engines.base import Hit
from ..errors import NotFound
from .index_sync import IndexSync, index_fields

MEMORY_NOT_FOUND = "记忆不存在"


def to_hit(row: Memory, scope: str, score: float) -> Hit:
    return Hit(
        id=row.id,
        scope=scope,
        score=score,
        content=row.content,
        question=row.question,
        title=row.title,
        category=row.category,
        grounded=bool((row.meta or {}).get("grounded", True)),
        created_at=row.created_at,
        similar=tuple(q for q in row.similar_questions or () if q),
    )


async def hits_for(
    session: AsyncSession, ranked: Sequence[tuple[str, int, float]], *, owner_id: str | None = None
) -> list[Hit]:
    """The ranked (scope, id, score) triples whose rows still exist (and belong where they were
    found), as hits, best first."""
    rows = await repo.get_many(session, [doc for _, doc, _ in ranked])
    found = [
        to_hit(rows[doc], scope, score)
        for scope, doc, score in ranked
        if doc in rows and rows[doc].scope == scope and (scope == PUBLIC or rows[doc].owner_id == owner_id)
    ]
    found.sort(key=lambda hit: hit.score, reverse=True)
    return found


class ChatExchange:
    """One exchange for a user's chat memory, written in a caller's transaction (`write`), the
    index told once that has committed (`committed`); the newest CHAT_MEMORY_LIMIT are kept."""

    def __init__(
        self,
        memory: MemoryService,
        user_id: str,
        question: str,
        answer: str,
        session_id: str,
        grounded: bool,
        tokens: bytes,
    ) -> None:
        self.memory = memory
        self.user_id = user_id
        self.question = question[:2000]
        self.answer = answer[:4000]
        self.session_id = session_id
        self.grounded = grounded
        self.tokens = tokens
        self._written: list[Memory] = []
        self._dropped: list[Memory] = []

    async def write(self, db: AsyncSession) -> None:
        row = await repo.add(
            db,
            scope=CHAT,
            owner_id=self.user_id,
            question=self.question,
            content=f"用户：{self.question}\n客服：{self.answer}",
            meta={"session_id": self.session_id, "grounded": self.grounded},
            tokens=self.tokens,
        )
        keep = self.memory.settings.chat_memory_limit
        self._written, self._dropped = (
            [row],
            await repo.trim(db, scope=CHAT, owner_id=self.user_id, keep=keep),
        )

    def committed(self, db: AsyncSession) -> None:
        self.memory.sync.committed(db, self._written, self._dropped)


class MemoryService:
    def __init__(self, sync: IndexSync, settings: Settings) -> None:
        self.sync = sync
        self.db = sync.db
        self.settings = settings

    # -- writes ---------------------------------------------------------------------------------

    async def add_private(self, user_id: str, content: str, metadata: dict[str, Any] | None = None) -> Memory:
        meta = dict(metadata or {})
        title = str(meta.get("title", ""))[:500]
        category = str(meta.get("category", ""))[:100]
        tokens = await self.sync.terms(([content], title))  # what index_fields reads of this row
        async with self.sync.writing() as db:
            row = await repo.add(
                db,
                scope=PRIVATE,
                owner_id=user_id,
                content=content,
                title=title,
                category=category,
                meta=meta,
                tokens=tokens,
            )
        self.sync.applied([row])
        return row

    async def update_private(
        self, user_id: str, memory_id: int, *, content: str | None, metadata: dict[str, Any] | None
    ) -> Memory:
        async with self.sync.writing() as db:
            row = await self._private_row(db, user_id, memory_id)
            if content is not None:
                row.content = content
            if metadata is not None:
                row.meta = dict(metadata)
                row.title = str(metadata.get("title", ""))[:500]
                row.category = str(metadata.get("category", ""))[:100]
            row.tokens = await self.sync.terms(index_fields(row))
            await repo.touch(db, row)
        self.sync.applied([row])
        return row

    async def delete_private(self, user_id: str, memory_id: int) -> None:
        async with self.sync.writing() as db:
            row = await self._private_row(db, user_id, memory_id)
            await repo.remove(db, row)
        self.sync.applied([], [row])

    async def exchange(
        self, user_id: str, question: str, answer: str, session_id: str, *, grounded: bool
    ) -> ChatExchange:
        """A finished exchange for the user's chat memory, analysed (in a worker thread) and
        ready to be written in the transaction that stores the answer
        (`SessionService.add_message(along=...)`): kept exactly when the answer is.

        grounded: the answer came from the knowledge or memories, so it may be repeated later.
        """
        tokens = await self.sync.terms(([question[:2000]], ""))  # what index_fields reads of this row
        return ChatExchange(self, user_id, question, answer, session_id, grounded, tokens)

    async def add_exchange(
        self, user_id: str, question: str, answer: str, session_id: str, *, grounded: bool
    ) -> None:
        """Remember a finished exchange in the user's chat memory on its own, keeping the newest N."""
        exchange = await self.exchange(user_id, question, answer, session_id, grounded=grounded)
        async with self.db.transaction() as db:
            await exchange.write(db)
        exchange.committed(db)

    # -- reads ----------------------------------------------------------------------------------

    async def search(self, user_id: str, query: str, *, limit: int) -> list[Hit]:
        """The best `limit` hits of each scope (private, chat, knowledge base), merged, best first."""
        await self.sync.refresh()
        ranked = await self.sync.hits(user_id, (PRIVATE, CHAT), query, limit)
        async with self.db.read() as db:
            return await hits_for(db, ranked, owner_id=user_id)

    async def entries(self, entry_ids: Sequence[int]) -> list[Hit | None]:
        """Knowledge-base entries as hits (score 1), in the order given; None for one that is gone."""
        async with self.db.read() as db:
            found = {hit.id: hit for hit in await hits_for(db, [(PUBLIC, i, 1.0) for i in entry_ids])}
        return [found.get(i) for i in entry_ids]

    async def list_private(self, user_id: str, *, offset: int, limit: int) -> tuple[list[Memory], int]:
        """One page of a user's private memories, newest first, and their total."""
        async with self.db.read() as db:
            return await repo.page(
                db, scope=PRIVATE, owner_id=user_id, offset=offset, limit=limit, newest_first=True
            )

    async def _private_row(self, db: AsyncSession, user_id: str, memory_id: int) -> Memory:
        row = await repo.get(db, memory_id, scope=PRIVATE, owner_id=user_id)
        if row is None:
            raise NotFound(MEMORY_NOT_FOUND)
        return row
