"""The agent console's tickets and canned replies (issue 10), for agents only (AgentDep):

GET    /api/v1/agent/tickets?status=open|closed&page=&page_size=   open first (oldest first), then closed
POST   /api/v1/agent/tickets/{ticket_id}/close                     once (409 the second time)
GET    /api/v1/agent/canned-replies                                your own, then the shared ones
POST   /api/v1/agent/canned-replies                                {"shortcut", "content", "shared": false}
PATCH  /api/v1/agent/canned-replies/{reply_id}                     {"shortcut"?, "content"?}
DELETE /api/v1/agent/canned-replies/{reply_id}

Shared replies (`"shared": true`) are a supervisor's to create, edit and delete.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from ...schemas.agent_desk import (
    CannedReplyCreate,
    CannedReplyList,
    CannedReplyOut,
    CannedReplyPatch,
    TicketOut,
    TicketPage,
    TicketStatus,
)
from ...schemas.common import Envelope
from ...services.audit_service import AuditContext
from ...services.canned_service import Editor
from ..deps import AgentActor, AgentDep, ServicesDep
from ..middleware.request_id import current_request_id

router = APIRouter()

RowId = Annotated[int, Path(ge=1, le=2**62)]
Page = Annotated[int, Query(ge=1, le=100_000)]
PageSize = Annotated[int, Query(ge=1, le=100)]


def _editor(agent: AgentActor) -> Editor:
    return Editor(agent_id=agent.agent_id, supervisor=agent.role == "supervisor")


@router.get("/tickets")
async def list_tickets(
    agent: AgentDep,
    services: ServicesDep,
    status: Annotated[TicketStatus | None, Query(description="open 或 closed；不填为全部")] = None,
    page: Page = 1,
    page_size: PageSize = 20,
) -> Envelope[TicketPage]:
    """客户留言：未处理的在前（最早的在前），含客户的联系方式与留言内容。"""
    rows, total = await services.tickets.page(status=status, page=page, page_size=page_size)
    data = TicketPage(
        items=[TicketOut.of(row) for row in rows],
        total=total,
        open_count=await services.tickets.count_open(),
        page=page,
        page_size=page_size,
    )
    return Envelope[TicketPage](message="获取成功", data=data)


@router.post("/tickets/{ticket_id}/close")
async def close_ticket(
    agent: AgentDep, services: ServicesDep, ticket_id: RowId, request: Request
) -> Envelope[TicketOut]:
    """将留言标记为已处理（只能一次，记入审计日志）。"""
    context = AuditContext(
        actor=agent.agent_id,
        role=agent.role,
        address=request.client.host if request.client is not None else "",
        request_id=current_request_id(),
    )
    row = await services.tickets.close(ticket_id, agent_id=agent.agent_id, context=context)
    return Envelope[TicketOut](message="留言已处理", data=TicketOut.of(row))


@router.get("/canned-replies")
async def list_canned_replies(agent: AgentDep, services: ServicesDep) -> Envelope[CannedReplyList]:
    """可用的快捷回复：自己的在前，公共的在后。"""
    rows = await services.canned.visible(_editor(agent))
    return Envelope[CannedReplyList](
        message="获取成功", data=CannedReplyList(items=[CannedReplyOut.of(r) for r in rows])
    )


@router.post("/canned-replies", status_code=201)
async def create_canned_reply(
    agent: AgentDep, services: ServicesDep, body: CannedReplyCreate
) -> Envelope[CannedReplyOut]:
    """新建快捷回复（shared=true 为公共快捷回复，仅主管可建）。"""
    row = await services.canned.create(
        _editor(agent), shortcut=body.shortcut, content=body.content, shared=body.shared
    )
    return Envelope[CannedReplyOut](message="快捷回复已保存", data=CannedReplyOut.of(row))


@router.patch("/canned-replies/{reply_id}")
async def update_canned_reply(
    agent: AgentDep, services: ServicesDep, reply_id: RowId, body: CannedReplyPatch
) -> Envelope[CannedReplyOut]:
    """修改快捷回复的短语或内容。"""
    row = await services.canned.update(_editor(agent), reply_id, shortcut=body.shortcut, content=body.content)
    return Envelope[CannedReplyOut](message="快捷回复已更新", data=CannedReplyOut.of(row))


@router.delete("/canned-replies/{reply_id}")
async def delete_canned_reply(agent: AgentDep, services: ServicesDep, reply_id: RowId) -> Envelope[None]:
    """删除快捷回复。"""
    await services.canned.delete(_editor(agent), reply_id)
    return Envelope[None](message="快捷回复已删除", data=None)
