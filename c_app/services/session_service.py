"""Chat sessions and their messages: the one writer of both tables, always for the user they belong to."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import messages as messages_repo
from ..db import moderation as moderation_repo
from ..db import sessions as repo
from ..db import uploads as uploads_repo
from ..db.engine import Database
from ..db.models import ChatSession, Message, utcnow
from ..errors import BadRequest, Forbidden, NotFound

DEFAULT_TITLE = "新对话"
ACTIVE_WITHIN = timedelta(hours=24)
HISTORY_PAGE_MAX = 200
TITLE_MAX = 200
FEEDBACK_COMMENT_MAX = 1000
RATINGS = ("like", "dislike")


class SessionGone(NotFound):
    """A message arrived for a session that no longer exists (deleted, or its customer erased)."""


class Along(Protocol):
    """Another service's write, committed with a message in its transaction (or not at all):
    `MemoryService.exchange`, the chat memory of the exchange an answer ends."""

    async def write(self, db: AsyncSession) -> None: ...

    def committed(self, db: AsyncSession) -> None: ...


def new_session_id(user_id: str) -> str:
    # The seed's shape; the user id part is cut so the whole id stays within the 128-character limit.
    return f"session_{user_id[:64]}_{uuid.uuid4().hex[:8]}_{int(datetime.now(UTC).timestamp())}"


class SessionService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, user_id: str, title: str | None, description: str | None) -> ChatSession:
        async with self.db.transaction() as db:
            return await repo.create(
                db,
                session_id=new_session_id(user_id),
                user_id=user_id,
                title=(title or "").strip() or DEFAULT_TITLE,
                description=description or "",
            )

    async def get(self, session_id: str, *, owner_id: str | None) -> ChatSession:
        async with self.db.read() as db:
            row = await repo.get(db, session_id, owner_id=owner_id)
        if row is None:
            raise NotFound("会话不存在")
        return row

    async def get_or_create(
        self, session_id: str, user_id: str, *, title: str = DEFAULT_TITLE
    ) -> ChatSession:
        """The user's session with this id, created if no one has it; another user's session is refused."""
        async with self.db.read() as db:
            row = await repo.get(db, session_id, owner_id=user_id)
        if row is not None:
            return row
        try:
            async with self.db.transaction() as db:
                return await repo.create(db, session_id=session_id, user_id=user_id, title=title)
        except IntegrityError:
            # Created meanwhile: by this user in a concurrent request (fine), or it belongs to someone else.
            async with self.db.read() as db:
                row = await repo.get(db, session_id, owner_id=user_id)
            if row is None:
                raise Forbidden("无权访问该会话") from None
            return row

    async def add_question(
        self,
        session_id: str,
        user_id: str,
        *,
        content: str,
        parts: list[dict[str, Any]] | None,
        title: str,
        status: str = "complete",
    ) -> tuple[Message, str]:
        """Store a customer's message in their session, created (with `title`) if no one has it
        yet; another user's session is refused. Returns the message and the session's status.
        One transaction: the session's counters moved (which finds it the user's), then the message
        inserted; a new session is created first, inside it."""
        async with self.db.transaction() as db:
            at = utcnow()
            session_status = await repo.record_messages(db, session_id, owner_id=user_id, count=1, at=at)
            if session_status is None:  # a new session (or someone else's: Forbidden)
                session_status = await self._open(db, session_id, user_id, title=title, at=at)
            row = await messages_repo.add(
                db,
                session_id=session_id,
                user_id=user_id,
                role="user",
                content=content,
                parts=parts,
                status=status,
            )
        return row, session_status

    async def _open(
        self, db: AsyncSession, session_id: str, user_id: str, *, title: str, at: datetime
    ) -> str:
        """Create the user's session with its first message counted; its status. The insert fails
        when the id is taken: by this user's concurrent first request (then count on theirs), or by
        someone else (refused)."""
        try:
            async with db.begin_nested():
                await repo.create(db, session_id=session_id, user_id=user_id, title=title)
        except IntegrityError:
            pass
        session_status = await repo.record_messages(db, session_id, owner_id=user_id, count=1, at=at)
        if session_status is None:
            raise Forbidden("无权访问该会话")
        return session_status

    async def add_message(
        self,
        session_id: str,
        user_id: str,
        *,
        role: str,
        content: str,
        parts: list[dict[str, Any]] | None = None,
        status: str = "complete",
        engine: str | None = None,
        sources: list[dict[str, Any]] | None = None,
        usage: dict[str, Any] | None = None,
        latency_ms: int | None = None,
        handoff: bool = False,
        outcome: str | None = None,
        entry_id: int | None = None,
        agent_id: str | None = None,
        agent_name: str | None = None,
        score: float | None = None,
        choices: list[int] | None = None,
        along: Along | None = None,
    ) -> Message:
        """Store a message and move the session's counters in one transaction (`handoff`: the
        session now waits for a person; `along`: another write committed with it, or not at all).

        Raises `SessionGone` when the session no longer exists (deleted, or its customer erased
        while the answer was streaming): nothing is stored then, `along` included."""
        try:
            async with self.db.transaction() as db:
                # The session row first, under its lock (db.sessions.record_messages): an erasure is
                # wholly before this transaction or after it.
                moved = await repo.record_messages(
                    db,
                    session_id,
                    owner_id=user_id,
                    count=1,
                    at=utcnow(),
                    status="waiting_human" if handoff else None,
                )
                if moved is None:
                    raise SessionGone("会话不存在")
                row = await messages_repo.add(
                    db,
                    session_id=session_id,
                    user_id=user_id,
                    role=role,
                    content=content,
                    parts=parts,
                    status=status,
                    engine=engine,
                    sources=sources,
                    usage=usage,
                    latency_ms=latency_ms,
                    outcome=outcome,
                    entry_id=entry_id,
                    agent_id=agent_id,
                    agent_name=agent_name,
                    score=score,
                    choices=choices,
                )
                if along is not None:
                    await along.write(db)
        except IntegrityError as exc:  # the foreign key refused it: the session is gone
            raise SessionGone("会话不存在") from exc
        if along is not None:
            along.committed(db)
        return row

    async def record_choice(self, message_id: int, entry_id: int) -> None:
        """The customer picked `entry_id` among the choices of the clarified answer `message_id`."""
        async with self.db.transaction() as db:
            await messages_repo.record_choice(db, message_id, entry_id)

    async def recent_messages(self, session_id: str, *, owner_id: str, limit: int) -> list[Message]:
        """The session's newest `limit` messages, oldest first."""
        async with self.db.read() as db:
            return await messages_repo.list_recent(db, session_id, owner_id=owner_id, limit=limit)

    async def list_for_user(self, user_id: str, *, limit: int, offset: int) -> list[ChatSession]:
        async with self.db.read() as db:
            return await repo.list_for_user(db, user_id, limit=limit, offset=offset)

    async def statistics(self) -> dict[str, int]:
        async with self.db.read() as db:
            stats = await repo.statistics(db, active_within=ACTIVE_WITHIN)
            stats["total_uploads"] = await uploads_repo.count(db)
            stats.update(await moderation_repo.totals(db))
        return stats

    async def record_moderation(
        self,
        session_id: str,
        user_id: str,
        *,
        message_id: int | None,
        direction: str,
        hits: int,
        words: list[str],
    ) -> None:
        """A sensitive-word event: the listed words a message matched (never the text around them)."""
        async with self.db.transaction() as db:
            await moderation_repo.add(
                db,
                user_id=user_id,
                session_id=session_id,
                message_id=message_id,
                direction=direction,
                hits=hits,
                words=words,
            )

    async def history(
        self,
        session_id: str,
        *,
        owner_id: str | None,
        limit: int,
        before: int | None = None,
        after: int | None = None,
        newest_first: bool = False,
    ) -> tuple[list[Message], bool]:
        """A page of the session's messages and whether more lie beyond it (see db.messages.page)."""
        if not 1 <= limit <= HISTORY_PAGE_MAX:
            raise BadRequest(f"限制数量必须在1-{HISTORY_PAGE_MAX}之间")
        if before is not None and after is not None:
            raise BadRequest("before 和 after 不能同时使用")
        async with self.db.read() as db:
            if await repo.get(db, session_id, owner_id=owner_id) is None:
                raise NotFound("会话不存在")
            return await messages_repo.page(
                db, session_id, limit=limit, before=before, after=after, newest_first=newest_first
            )

    async def rename(self, session_id: str, title: str, *, owner_id: str | None) -> ChatSession:
        title = " ".join(title.split())  # one line in a session list: newlines and runs of spaces go
        if not title:
            raise BadRequest("会话标题不能为空")
        if len(title) > TITLE_MAX:
            raise BadRequest(f"会话标题不能超过{TITLE_MAX}个字符")
        async with self.db.transaction() as db:
            row = await repo.get(db, session_id, owner_id=owner_id)
            if row is None:
                raise NotFound("会话不存在")
            row.title = title
        return row

    async def delete(self, session_id: str, *, owner_id: str | None) -> int:
        """Delete the session and its messages; returns how many messages went. Memories stay."""
        async with self.db.transaction() as db:
            if await repo.get(db, session_id, owner_id=owner_id) is None:
                raise NotFound("会话不存在")
            removed = await messages_repo.delete_for_session(db, session_id)
            await repo.delete_one(db, session_id)
        return removed

    async def set_feedback(
        self, message_id: int, *, owner_id: str | None, rating: str | None, comment: str | None
    ) -> Message:
        """Rate an answer like/dislike with an optional comment; rating None clears both."""
        if rating is not None and rating not in RATINGS:
            raise BadRequest("评价只能是 like、dislike 或 null")
        comment = (comment or "").strip() or None
        if comment is not None and len(comment) > FEEDBACK_COMMENT_MAX:
            raise BadRequest(f"评价内容不能超过{FEEDBACK_COMMENT_MAX}个字符")
        async with self.db.transaction() as db:
            row = await messages_repo.get(db, message_id, owner_id=owner_id)
            if row is None:
                raise NotFound("消息不存在")
            if row.role != "assistant":
                raise BadRequest("只能评价客服的回答")
            messages_repo.set_feedback(row, rating=rating, comment=comment, at=utcnow())
        return row
