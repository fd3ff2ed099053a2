"""Chat sessions: create, fetch, list; always for the user they belong to."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError

from ..db import sessions as repo
from ..db import uploads as uploads_repo
from ..db.engine import Database
from ..db.models import ChatSession
from ..errors import Forbidden, NotFound

DEFAULT_TITLE = "新对话"
ACTIVE_WITHIN = timedelta(hours=24)


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

    async def get_or_create(self, session_id: str, user_id: str, *, title: str = DEFAULT_TITLE) -> ChatSession:
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

    async def list_for_user(self, user_id: str, *, limit: int, offset: int) -> list[ChatSession]:
        async with self.db.read() as db:
            return await repo.list_for_user(db, user_id, limit=limit, offset=offset)

    async def statistics(self) -> dict[str, int]:
        async with self.db.read() as db:
            stats = await repo.statistics(db, active_within=ACTIVE_WITHIN)
            stats["total_uploads"] = await uploads_repo.count(db)
        return stats
