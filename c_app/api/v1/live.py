"""The customer's side of a conversation with a person (issue 10): live events, typing, read
receipts and the rating (CSAT) - /api/v1/chat/session/{id}/...

Scoped like the other session routes: a session outside the caller's scope is missing (404).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ...errors import Forbidden
from ...schemas.agent import RatingRequest, ReadRequest
from ...schemas.common import Envelope
from ...security.auth import AGENT_NOT_CUSTOMER, Authenticator, credential_from
from ...services.live import session_channel
from ..deps import ActorSessionDep, ServicesDep, actor_session
from ..live_stream import last_event_id, sse_frames
from ..streaming import EventStreamResponse

router = APIRouter()

Data = Envelope[dict[str, Any]]


@router.post("/session/{session_id}/rating")
async def rate_session(session: ActorSessionDep, body: RatingRequest, services: ServicesDep) -> Data:
    """对人工服务评分（1-5 分，可附评论），每次人工服务只能评价一次。"""
    data = await services.agents.rate(session.id, session.owner, body.score, body.comment)
    return Data(message="感谢您的评价", data=data)


@router.post("/session/{session_id}/typing")
async def customer_typing(session: ActorSessionDep, services: ServicesDep) -> Data:
    """客户正在输入（告知接入的客服）。"""
    await services.agents.customer_signal(session.id, session.owner, "typing", None)
    return Data(message="已发送", data={"session_id": session.id})


@router.post("/session/{session_id}/read")
async def customer_read(session: ActorSessionDep, body: ReadRequest, services: ServicesDep) -> Data:
    """已读回执：客户已读到客服的某条消息。"""
    await services.agents.customer_signal(session.id, session.owner, "read", body.message_id)
    return Data(message="已记录", data={"session_id": session.id, "message_id": body.message_id})


@router.get(
    "/session/{session_id}/events",
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE"}},
)
async def session_events(session_id: str, request: Request, services: ServicesDep) -> EventStreamResponse:
    """会话实时事件（SSE）：排队位置、客服接入、客服消息、正在输入、结束（邀请评价）；
    断线重连时带 Last-Event-ID，不丢不重。EventSource 不能设置请求头：也接受 `?token=`。"""
    authenticator: Authenticator = request.app.state.authenticator
    actor = authenticator.authenticate(credential_from(request.headers, request.query_params))
    if actor.is_agent:
        raise Forbidden(AGENT_NOT_CUSTOMER)
    session = actor_session(session_id, actor)
    await services.sessions.get(session.id, owner_id=session.owner)
    after = last_event_id(request)
    return EventStreamResponse(sse_frames(services.live, [session_channel(session.id)], after))
