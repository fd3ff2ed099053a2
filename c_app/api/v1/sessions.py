"""A session's history, rename and delete, and feedback on answers: /api/v1/chat/session/..., /message/...

These routes name no user in the path: they act for the caller (`actor.scope`). A trusted caller
(AUTH_MODE=none) may narrow them to one user with `?user_id=`; a session or message outside that
scope is reported as missing, never as forbidden, so ids of other users' data are not confirmed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse

from ...db.models import Message
from ...errors import BadRequest
from ...schemas.customer import ID_MAX, SessionResponse
from ...schemas.history import Feedback, FeedbackRequest, MessageItem, MessagePage, RenameRequest
from ..deps import ActorDep, ServicesDep
from .customer.customer import session_response

router = APIRouter()

_ID_LIMIT = 2**63 - 1  # message ids are BIGINT: larger numbers would fail in the database, not here
SessionId = Annotated[str, Path(min_length=1, max_length=ID_MAX)]
MessageId = Annotated[int, Path(ge=1, le=_ID_LIMIT)]


def request_owner(
    actor: ActorDep, user_id: Annotated[str | None, Query(max_length=ID_MAX)] = None
) -> str | None:
    """The owner this request's reads and writes are limited to (None: a trusted caller, any owner)."""
    if user_id is None:
        return actor.scope
    return actor.act_for(user_id)


OwnerDep = Annotated[str | None, Depends(request_owner)]


def feedback_of(row: Message) -> Feedback | None:
    if row.feedback is None:
        return None
    return Feedback(
        rating=row.feedback,  # type: ignore[arg-type]  # the service stores only "like" or "dislike"
        comment=row.feedback_comment,
        created_at=row.feedback_at.isoformat() if row.feedback_at else None,
    )


def message_item(row: Message) -> MessageItem:
    return MessageItem(
        id=row.id,
        role=row.role,
        content=row.content,
        parts=row.parts,
        status=row.status,
        engine=row.engine,
        sources=row.sources,
        feedback=feedback_of(row),
        created_at=row.created_at.isoformat(),
    )


@router.get("/session/{session_id}/messages", response_model=MessagePage)
async def list_messages(
    session_id: SessionId,
    services: ServicesDep,
    owner: OwnerDep,
    limit: int = 50,
    before: Annotated[int | None, Query(ge=0, le=_ID_LIMIT)] = None,
    after: Annotated[int | None, Query(ge=0, le=_ID_LIMIT)] = None,
    order: str = "asc",
) -> MessagePage:
    """会话消息历史，分页：before/after 为消息 ID 游标，order=asc（从旧到新）或 desc（从新到旧）。"""
    if order not in ("asc", "desc"):
        raise BadRequest("排序方式只能是 asc 或 desc")
    rows, has_more = await services.sessions.history(
        session_id, owner_id=owner, limit=limit, before=before, after=after, newest_first=order == "desc"
    )
    return MessagePage(session_id=session_id, messages=[message_item(row) for row in rows], has_more=has_more)


@router.patch("/session/{session_id}", response_model=SessionResponse)
async def rename_session(
    session_id: SessionId, request: RenameRequest, services: ServicesDep, owner: OwnerDep
) -> SessionResponse:
    """重命名会话（标题 1-200 个字符，首尾空白会被去掉）。"""
    row = await services.sessions.rename(session_id, request.title, owner_id=owner)
    return session_response(row)


@router.delete("/session/{session_id}")
async def delete_session(session_id: SessionId, services: ServicesDep, owner: OwnerDep) -> JSONResponse:
    """删除会话及其全部消息；用户的记忆保留。"""
    removed = await services.sessions.delete(session_id, owner_id=owner)
    return JSONResponse(
        content={
            "success": True,
            "message": "会话已删除",
            "data": {"session_id": session_id, "deleted_messages": removed},
        }
    )


@router.post("/message/{message_id}/feedback")
async def message_feedback(
    message_id: MessageId, request: FeedbackRequest, services: ServicesDep, owner: OwnerDep
) -> JSONResponse:
    """对客服回答点赞或点踩（可附评论）；rating 为 null 时清除评价。"""
    row = await services.sessions.set_feedback(
        message_id, owner_id=owner, rating=request.rating, comment=request.comment
    )
    feedback = feedback_of(row)
    return JSONResponse(
        content={
            "success": True,
            "message": "评价已保存" if feedback else "评价已清除",
            "data": {"message_id": row.id, "feedback": feedback.model_dump() if feedback else None},
        }
    )
