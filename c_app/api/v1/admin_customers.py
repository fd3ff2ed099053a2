"""Operator routes for personal data and the audit log, behind ADMIN_TOKEN:

GET    /api/v1/admin/customers/{user_id}/export   one zip: customer.json and the customer's uploads
DELETE /api/v1/admin/customers/{user_id}          erase everything held about the customer
GET    /api/v1/admin/audit                        the audit log, newest first (read-only: no route
                                                  changes or removes an entry)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse

from ...errors import BadRequest
from ...schemas.common import Envelope
from ...schemas.customer import ID_MAX, ID_PATTERN
from ...schemas.privacy import AuditEntryOut, AuditPage, ErasureResult
from ...services.audit_service import AuditContext
from ..deps import ServicesDep, require_id
from .admin import audit_context, require_admin

router = APIRouter(dependencies=[Depends(require_admin)])

CustomerId = Annotated[str, Path(max_length=ID_MAX, pattern=ID_PATTERN, description="客户（用户）ID")]
AuditContextDep = Annotated[AuditContext, Depends(audit_context)]
_ARCHIVE = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}


def _attachment(user_id: str) -> str:
    """Content-Disposition for the archive: an ASCII fallback name and the real one (RFC 6266/8187)."""
    return f"attachment; filename=\"customer-export.zip\"; filename*=UTF-8''{quote(f'customer-{user_id}.zip', safe='')}"


@router.get(
    "/customers/{user_id}/export",
    response_class=StreamingResponse,
    responses={200: {"description": "客户数据归档（zip：customer.json 与上传的文件）", "content": _ARCHIVE}},
)
async def export_customer(
    user_id: CustomerId, services: ServicesDep, context: AuditContextDep
) -> StreamingResponse:
    """导出一位客户的全部个人数据：会话、消息（含评价）、私有记忆、对话记忆、上传文件、敏感词事件。

    未知客户得到各列表为空的归档。导出会记入审计日志。"""
    user_id = require_id(user_id, "用户ID不能为空")
    archive = await services.customer_data.export(user_id, context)
    headers = {
        "Content-Disposition": _attachment(user_id),
        "Content-Length": str(archive.size),
        "Cache-Control": "no-store",
    }
    return StreamingResponse(archive.chunks(), media_type="application/zip", headers=headers)


@router.delete("/customers/{user_id}")
async def erase_customer(
    user_id: CustomerId, request: Request, services: ServicesDep, context: AuditContextDep
) -> Envelope[ErasureResult]:
    """删除一位客户的全部个人数据（会话、消息、私有与对话记忆、上传记录与文件、敏感词事件、限流计数），
    返回各类删除的数量；可重复调用（再次调用各项为 0）。审计日志保留，其中的客户ID改为化名。"""
    user_id = require_id(user_id, "用户ID不能为空")
    erasure = await services.customer_data.erase(user_id, context, limits=request.app.state.rate_limits)
    # Answers still being generated for the customer in this process stop (what they had is not kept).
    stopped = sum(services.chat.interrupt(session_id) for session_id in erasure.session_ids)
    return Envelope[ErasureResult](
        message="客户数据已删除",
        data=ErasureResult(user_id=user_id, stopped_answers=stopped, **erasure.counts),
    )


@router.get("/audit")
async def list_audit(
    services: ServicesDep,
    context: AuditContextDep,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
    action: Annotated[
        str | None, Query(max_length=64, description="如 customer.export、knowledge.update")
    ] = None,
    customer_id: Annotated[str | None, Query(max_length=ID_MAX, pattern=ID_PATTERN)] = None,
    target_type: Annotated[
        str | None, Query(max_length=32, description="customer、knowledge、audit…")
    ] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601 时间，含；无时区按 UTC")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601 时间，含；无时区按 UTC")] = None,
) -> Envelope[AuditPage]:
    """分页查看审计日志，最新的在前；可按操作、客户、对象类型与时间范围筛选。

    按客户筛选时，也会找到该客户被删除前的记录（记录中的客户ID已改为化名）。查看本身也会记入审计日志。"""
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and since > until:
        raise BadRequest("since 不能晚于 until")
    rows, total = await services.audit.list_entries(
        page=page,
        page_size=page_size,
        action=action,
        customer_id=customer_id,
        target_type=target_type,
        since=since,
        until=until,
    )
    filters = {
        "action": action,
        "customer_id": customer_id,
        "target_type": target_type,
        "since": since,
        "until": until,
    }
    await services.audit.record(
        context,
        "audit.list",
        target_type="audit",
        customer_id=customer_id,  # a look at one customer's entries is about that customer
        detail={
            "filters": sorted(name for name, value in filters.items() if value is not None),
            "page": page,
            "returned": len(rows),
        },
    )
    return Envelope[AuditPage](
        message="获取成功",
        data=AuditPage(
            total=total, page=page, page_size=page_size, items=[AuditEntryOut.from_row(row) for row in rows]
        ),
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
