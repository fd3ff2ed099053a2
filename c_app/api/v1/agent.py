"""The agent side (issue 10): /api/v1/agent/... presence, queue, conversation, transfer, close, events.

Every route acts as the agent `AgentDep` names (api/deps.py); the rules are AgentService's.
docs/agent-api.md is the contract (bodies, answers, SSE events).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from ...schemas.agent import AgentMessageRequest, PresenceRequest, TransferRequest
from ...schemas.common import Envelope
from ...schemas.customer import ID_MAX, ID_PATTERN
from ...services.agent_service import Acting
from ...services.live import QUEUE_CHANNEL, agent_channel
from ..deps import AgentActor, AgentDep, ServicesDep, agent_from
from ..live_stream import last_event_id, sse_frames
from ..middleware.request_id import current_request_id
from ..streaming import EventStreamResponse

router = APIRouter()

SessionId = Annotated[str, Path(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN)]
Data = Envelope[dict[str, Any]]


def acting(agent: AgentActor, request: Request) -> Acting:
    address = request.client.host if request.client is not None else ""
    return Acting(agent.agent_id, agent.name, agent.role, address=address, request_id=current_request_id())


@router.get("/me")
async def me(agent: AgentDep, request: Request, services: ServicesDep) -> Data:
    """当前客服的在线状态（同时视为一次心跳）。"""
    return Data(message="获取成功", data=await services.agents.presence(acting(agent, request)))


@router.post("/presence")
async def set_presence(
    body: PresenceRequest, agent: AgentDep, request: Request, services: ServicesDep
) -> Data:
    """设置在线状态：online / away / offline，可同时设置最大接待数。"""
    data = await services.agents.set_presence(acting(agent, request), body.status, body.max_concurrent)
    return Data(message="状态已更新", data=data)


@router.post("/heartbeat")
async def heartbeat(agent: AgentDep, request: Request, services: ServicesDep) -> Data:
    """心跳：超过 AGENT_HEARTBEAT_TIMEOUT 秒没有心跳（或事件流）的在线客服视为离开。"""
    return Data(message="心跳已记录", data=await services.agents.presence(acting(agent, request)))


@router.get("/agents")
async def list_agents(agent: AgentDep, services: ServicesDep) -> Data:
    """全部客服及其状态（转接目标）。"""
    return Data(message="获取成功", data={"agents": await services.agents.agents()})


@router.get("/queue")
async def queue(agent: AgentDep, services: ServicesDep) -> Data:
    """排队中的会话，等待最久的在前。"""
    items = await services.agents.queue()
    return Data(message="获取成功", data={"items": items, "total": len(items)})


@router.get("/sessions")
async def my_sessions(agent: AgentDep, request: Request, services: ServicesDep) -> Data:
    """当前客服接入中的会话。"""
    return Data(message="获取成功", data={"items": await services.agents.held(acting(agent, request))})


@router.get("/sessions/{session_id}")
async def session_detail(
    session_id: SessionId, agent: AgentDep, request: Request, services: ServicesDep
) -> Data:
    """会话的最近一次转人工：客户上下文、对话、内部备注。"""
    return Data(message="获取成功", data=await services.agents.detail(acting(agent, request), session_id))


@router.post("/sessions/{session_id}/claim")
async def claim(session_id: SessionId, agent: AgentDep, request: Request, services: ServicesDep) -> Data:
    """从队列接入会话；多人同时接入时只有一人成功（其余 409）。"""
    return Data(message="已接入会话", data=await services.agents.claim(acting(agent, request), session_id))


@router.post("/sessions/{session_id}/messages")
async def reply(
    session_id: SessionId, body: AgentMessageRequest, agent: AgentDep, request: Request, services: ServicesDep
) -> Data:
    """回复客户（internal=true 时为内部备注，客户不可见）。"""
    data = await services.agents.reply(
        acting(agent, request), session_id, body.content, internal=body.internal
    )
    return Data(message="备注已添加" if body.internal else "消息已发送", data=data)


@router.post("/sessions/{session_id}/typing")
async def typing(session_id: SessionId, agent: AgentDep, request: Request, services: ServicesDep) -> Data:
    """正在输入提示（发给客户）。"""
    await services.agents.typing(acting(agent, request), session_id)
    return Data(message="已发送", data={"session_id": session_id})


@router.post("/sessions/{session_id}/transfer")
async def transfer(
    session_id: SessionId, body: TransferRequest, agent: AgentDep, request: Request, services: ServicesDep
) -> Data:
    """转接给另一位在线客服。"""
    data = await services.agents.transfer(acting(agent, request), session_id, body.agent_id)
    return Data(message="已转接", data=data)


@router.post("/sessions/{session_id}/close")
async def close(session_id: SessionId, agent: AgentDep, request: Request, services: ServicesDep) -> Data:
    """结束人工服务：会话交还机器人，并邀请客户评价。"""
    return Data(message="会话已结束", data=await services.agents.close(acting(agent, request), session_id))


@router.get("/stats")
async def stats(agent: AgentDep, services: ServicesDep) -> Data:
    """人工客服统计：转人工次数、排队长度、等待时间 p50/p90、处理时长、满意度、未处理留言。"""
    return Data(message="获取成功", data=await services.agents.stats())


@router.get(
    "/events",
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE"}},
)
async def events(request: Request, services: ServicesDep) -> EventStreamResponse:
    """客服事件流（SSE）：新排队、分配、客户消息、已读、转接、结束、评价；支持 Last-Event-ID 续传。

    EventSource 不能设置请求头：也接受 `?token=`。"""
    agent = agent_from(request, query_token=True)
    who = acting(agent, request)
    after = last_event_id(request)
    await services.agents.presence(who)  # connecting is a sign of life

    async def alive() -> None:
        await services.agents.presence(who)

    channels = [agent_channel(agent.agent_id), QUEUE_CHANNEL]
    return EventStreamResponse(sse_frames(services.live, channels, after, on_keepalive=alive))
