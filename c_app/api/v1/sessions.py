"""A session's history, rename and delete, and feedback on answers: /api/v1/chat/session/..., /message/...

These routes name no user in the path: they act for the caller (`actor.scope`). A trusted caller
(AUTH_MODE=none) may narrow them to one user with `?user_id=`; a session or message outside that
scope is reported as missing, never as forbidden, so ids of other users' data are not confirmed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from ...errors import BadRequest
from ...schemas.common import Envelope
from ...schemas.customer import SessionResponse
from ...schemas.history import (
    DeletedSession,
    Feedback,
    FeedbackRequest,
    FeedbackResult,
    MessageItem,
    MessagePage,
    RenameRequest,
)
from ..deps import OwnedSessionDep, OwnerDep, ServicesDep

router = APIRouter()

_ID_LIMIT = 2**63 - 1  # message ids are BIGINT: larger numbers would fail in the database, not here
MessageId = Annotated[int, Path(ge=1, le=_ID_LIMIT)]


@router.get("/session/{session_id}/messages")
async def list_messages(
    session: OwnedSessionDep,
    services: ServicesDep,
    limit: int = 50,
    before: Annotated[int | None, Query(ge=0, le=_ID_LIMIT)] = None,
    after: Annotated[int | None, Query(ge=0, le=_ID_LIMIT)] = None,
    order: str = "asc",
) -> MessagePage:
    """会话消息历史，分页：before/after 为消息 ID 游标，order=asc（从旧到新）或 desc（从新到旧）。"""
    if order not in ("asc", "desc"):
        raise BadRequest("排序方式只能是 asc 或 desc")
    rows, has_more = await services.sessions.history(
        session.id,
        owner_id=session.owner,
        limit=limit,
        before=before,
        after=after,
        newest_first=order == "desc",
    )
    return MessagePage(
        session_id=session.id, messages=[MessageItem.from_row(row) for row in rows], has_more=has_more
    )


@router.patch("/session/{session_id}")
async def rename_session(
    session: OwnedSessionDep, request: RenameRequest, services: ServicesDep
) -> SessionResponse:
    """重命名会话（标题 1-200 个字符，首尾空白会被去掉）。"""
    row = await services.sessions.rename(session.id, request.title, owner_id=session.owner)
    return SessionResponse.from_row(row)


@router.delete("/session/{session_id}")
async def delete_session(session: OwnedSessionDep, services: ServicesDep) -> Envelope[DeletedSession]:
    """删除会话及其全部消息；用户的记忆保留。"""
    removed = await services.sessions.delete(session.id, owner_id=session.owner)
    return Envelope[DeletedSession](
        message="会话已删除", data=DeletedSession(session_id=session.id, deleted_messages=removed)
    )


@router.post("/message/{message_id}/feedback")
async def message_feedback(
    message_id: MessageId, request: FeedbackRequest, services: ServicesDep, owner: OwnerDep
) -> Envelope[FeedbackResult]:
    """对客服回答点赞或点踩（可附评论）；rating 为 null 时清除评价。"""
    row = await services.sessions.set_feedback(
        message_id, owner_id=owner, rating=request.rating, comment=request.comment
    )
    if request.rating == "dislike":  # two 👎 in a row hand the session to a person (issue 10)
        await services.agents.on_feedback(row.session_id, row.user_id)
    feedback = Feedback.from_row(row)
    return Envelope[FeedbackResult](
        message="评价已保存" if feedback else "评价已清除",
        data=FeedbackResult(message_id=row.id, feedback=feedback),
    )
