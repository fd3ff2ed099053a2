"""Canned replies (快捷回复): an agent's saved answers, inserted in the console with "/" + shortcut.

    replies = CannedReplyService(db)
    await replies.visible(agent)                                  # own ones first, then the shared
    await replies.create(agent, shortcut="thanks", content="感谢您的耐心等待！", shared=False)

Each agent has their own; shared ones (owner "") are visible to everyone and managed by a
supervisor only. A shortcut is unique per owner (an agent may keep one of their own with the name
of a shared one: the console prefers their own). Bounds: MAX_PER_OWNER replies per owner; the
shortcut's and the text's sizes are the request schema's (schemas/canned.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from ..db import canned as repo
from ..db.engine import Database
from ..db.models import CannedReply, utcnow
from ..errors import BadRequest, Conflict, Forbidden, NotFound

MAX_PER_OWNER = 200
SHARED = repo.SHARED


@dataclass(frozen=True, slots=True)
class Editor:
    """Who manages canned replies: an agent id and whether they are a supervisor."""

    agent_id: str
    supervisor: bool = False


def _taken(shortcut: str) -> Conflict:
    return Conflict(f"快捷短语“/{shortcut}”已存在")


class CannedReplyService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def visible(self, editor: Editor) -> list[CannedReply]:
        async with self.db.read() as db:
            return await repo.visible_to(db, editor.agent_id)

    def _may_edit(self, editor: Editor, row: CannedReply) -> None:
        if row.owner_id == SHARED:
            if not editor.supervisor:
                raise Forbidden("只有主管可以管理公共快捷回复")
        elif row.owner_id != editor.agent_id:
            raise NotFound("快捷回复不存在")  # another agent's own: not even named

    async def create(self, editor: Editor, *, shortcut: str, content: str, shared: bool) -> CannedReply:
        if shared and not editor.supervisor:
            raise Forbidden("只有主管可以管理公共快捷回复")
        owner = SHARED if shared else editor.agent_id
        try:
            async with self.db.transaction() as db:
                if await repo.count_for(db, owner) >= MAX_PER_OWNER:
                    raise BadRequest(f"快捷回复数量已达上限（{MAX_PER_OWNER} 条）")
                if await repo.find(db, owner, shortcut) is not None:
                    raise _taken(shortcut)
                return await repo.add(db, owner_id=owner, shortcut=shortcut, content=content, at=utcnow())
        except IntegrityError:  # the same shortcut added at the same moment
            raise _taken(shortcut) from None

    async def update(
        self, editor: Editor, reply_id: int, *, shortcut: str | None, content: str | None
    ) -> CannedReply:
        try:
            async with self.db.transaction() as db:
                row = await repo.get(db, reply_id)
                if row is None:
                    raise NotFound("快捷回复不存在")
                self._may_edit(editor, row)
                if shortcut is not None and shortcut != row.shortcut:
                    if await repo.find(db, row.owner_id, shortcut) is not None:
                        raise _taken(shortcut)
                    row.shortcut = shortcut
                if content is not None:
                    row.content = content
                row.updated_at = utcnow()
                await db.flush()
                return row
        except IntegrityError:
            raise _taken(shortcut or "") from None

    async def delete(self, editor: Editor, reply_id: int) -> None:
        async with self.db.transaction() as db:
            row = await repo.get(db, reply_id)
            if row is None:
                raise NotFound("快捷回复不存在")
            self._may_edit(editor, row)
            await db.delete(row)
