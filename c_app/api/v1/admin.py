"""Operator routes: /api/v1/admin/knowledge/... (knowledge-base management), behind ADMIN_TOKEN.

Every change to the knowledge base, and its export, is recorded in the audit log (`Auditor`).
Reads of single entries, listings and hit tests are not: the knowledge base is the company's public
answers, not anyone's personal data, and logging every look at it would bury the entries that matter."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ...errors import BadRequest, Unauthorized, ValidationFailed
from ...schemas.common import Envelope
from ...schemas.knowledge import (
    DeletedEntry,
    GateReportOut,
    GoldenRequest,
    HitTestRequest,
    HitTestResult,
    ImportReportOut,
    KnowledgeEntryIn,
    KnowledgeEntryOut,
    KnowledgeEntryPatch,
    KnowledgePage,
)
from ...services.audit_service import AuditContext, AuditService
from ...services.golden import GoldenQuestion, parse_golden
from ...services.knowledge_service import KnowledgeService
from ..deps import ServicesDep
from ..middleware.request_id import current_request_id

_bearer = HTTPBearer(auto_error=False, description="ADMIN_TOKEN")


def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Admit a caller holding `Authorization: Bearer <ADMIN_TOKEN>`; refuse everyone when it is unset."""
    expected = request.app.state.settings.admin_token
    if not expected:
        raise Unauthorized("管理接口未启用：服务器未配置 ADMIN_TOKEN")
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("管理员令牌无效", headers={"WWW-Authenticate": "Bearer"})


def get_knowledge(services: ServicesDep) -> KnowledgeService:
    return services.knowledge


ADMIN_ACTOR = "admin"  # the ADMIN_TOKEN holder (one shared token: no named operators yet)


class Auditor:
    """The audit log, bound to who acts in this request (the ADMIN_TOKEN holder) and from where."""

    def __init__(self, service: AuditService, context: AuditContext) -> None:
        self.service = service
        self.context = context

    async def record(self, action: str, **fields: Any) -> None:
        await self.service.record(self.context, action, **fields)


def audit_context(request: Request) -> AuditContext:
    address = request.client.host if request.client is not None else ""
    return AuditContext(actor=ADMIN_ACTOR, role="admin", address=address, request_id=current_request_id())


def get_auditor(request: Request, services: ServicesDep) -> Auditor:
    return Auditor(services.audit, audit_context(request))


AdminDep = Annotated[None, Depends(require_admin)]
AuditorDep = Annotated[Auditor, Depends(get_auditor)]
KnowledgeDep = Annotated[KnowledgeService, Depends(get_knowledge)]
EntryId = Annotated[int, Path(ge=1, le=2**63 - 1)]

router = APIRouter(dependencies=[Depends(require_admin)])

_EXPORT_MEDIA = {
    "application/x-ndjson": {"schema": {"type": "string"}},
    "text/csv": {"schema": {"type": "string"}},
}


@router.get("/knowledge")
async def list_entries(
    knowledge: KnowledgeDep,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
    category: Annotated[str | None, Query(max_length=100)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> Envelope[KnowledgePage]:
    """分页列出知识库条目，可按分类与关键词（标题、问题、答案）筛选。"""
    rows, total = await knowledge.list_entries(page=page, page_size=page_size, category=category, text=q)
    return Envelope[KnowledgePage](
        message="获取成功",
        data=KnowledgePage(
            total=total,
            page=page,
            page_size=page_size,
            items=[KnowledgeEntryOut.from_row(row) for row in rows],
        ),
    )


@router.get(
    "/knowledge/export",
    response_class=StreamingResponse,
    responses={200: {"description": "知识库文件（jsonl 或 csv）", "content": _EXPORT_MEDIA}},
)
async def export_entries(
    knowledge: KnowledgeDep,
    auditor: AuditorDep,
    fmt: Annotated[str, Query(alias="format", max_length=16)] = "jsonl",
) -> StreamingResponse:
    """导出整个知识库（jsonl 或 csv，与导入格式相同）。"""
    chunks = knowledge.export(fmt)
    fmt = fmt.lower()
    await auditor.record("knowledge.export", target_type="knowledge", detail={"format": fmt})
    media_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson; charset=utf-8"
    headers = {"Content-Disposition": f'attachment; filename="knowledge.{fmt}"'}
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


@router.post("/knowledge/import")
async def import_entries(
    knowledge: KnowledgeDep,
    auditor: AuditorDep,
    file: Annotated[UploadFile, File()],
    fmt: Annotated[str | None, Form(alias="format", max_length=16)] = None,
    strict: Annotated[bool, Form()] = False,
    golden: Annotated[UploadFile | None, File()] = None,
    min_right: Annotated[float, Form(ge=0, le=1)] = 0.8,
) -> Envelope[ImportReportOut]:
    """导入知识库文件（JSON Lines、CSV 或 Markdown）；有 external_id 的条目更新而不重复。

    strict=true 时只要有一行有误就不导入任何条目，返回 422，error.details 列出有误的行。
    附带 golden（黄金问题集 JSONL）时先在导入后的知识库上试跑：正确率低于 min_right 则不导入任何条目，返回 422。"""
    data = await knowledge.read_upload(file)
    questions = parse_golden(_utf8(await knowledge.read_upload(golden))) if golden is not None else None
    report = await knowledge.import_bytes(
        data, filename=file.filename, fmt=fmt, strict=strict, golden=questions, min_right=min_right
    )
    await auditor.record(
        "knowledge.import",
        target_type="knowledge",
        detail={
            "created": report.created,
            "updated": report.updated,
            "failed": report.failed,
            "deleted": report.deleted,
            "strict": strict,
            "rejected": report.rejected,
            "bytes": len(data),
            **({"gate_right_rate": round(report.gate.right_rate, 4)} if report.gate else {}),
            "gated": report.gated,
        },
    )
    if report.rejected:
        raise ValidationFailed("导入数据有误，未导入任何条目", details=report.errors)
    if report.gate is not None and report.gated:
        raise ValidationFailed(
            f"导入后黄金问题正确率为 {report.gate.right_rate:.1%}，低于 {min_right:.1%}，未导入任何条目",
            details=report.gate.as_dict(),
        )
    return Envelope[ImportReportOut](
        message="导入完成", data=ImportReportOut.model_validate(report.as_dict())
    )


@router.post("/knowledge/eval")
async def evaluate_golden(request: GoldenRequest, knowledge: KnowledgeDep) -> Envelope[GateReportOut]:
    """黄金问题评测：在当前知识库上逐条作答，统计答对、答错、反问（含正确条目）与未命中，列出未答对的问题。"""
    golden = [GoldenQuestion(q.question, q.external_id or None) for q in request.questions]
    report = await knowledge.evaluate_golden(golden, min_right=request.min_right)
    return Envelope[GateReportOut](message="评测完成", data=GateReportOut.model_validate(report.as_dict()))


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest("黄金问题集不是 UTF-8 编码") from None


@router.post("/knowledge/hit-test")
async def hit_test(request: HitTestRequest, knowledge: KnowledgeDep) -> Envelope[HitTestResult]:
    """命中测试：查看查询的归一化与分词结果、命中的条目与得分，以及是否会直接作答。"""
    result = await knowledge.hit_test(request.query, limit=request.limit)
    return Envelope[HitTestResult](message="测试完成", data=HitTestResult.model_validate(result))


@router.post("/knowledge")
async def create_entry(
    entry: KnowledgeEntryIn, knowledge: KnowledgeDep, auditor: AuditorDep
) -> Envelope[KnowledgeEntryOut]:
    """新增知识条目。"""
    row = await knowledge.create(entry)
    await auditor.record("knowledge.create", target_type="knowledge", target_id=row.id)
    return Envelope[KnowledgeEntryOut](message="创建成功", data=KnowledgeEntryOut.from_row(row))


@router.get("/knowledge/{entry_id}")
async def get_entry(entry_id: EntryId, knowledge: KnowledgeDep) -> Envelope[KnowledgeEntryOut]:
    """获取一个知识条目。"""
    row = await knowledge.get(entry_id)
    return Envelope[KnowledgeEntryOut](message="获取成功", data=KnowledgeEntryOut.from_row(row))


@router.put("/knowledge/{entry_id}")
async def update_entry(
    entry_id: EntryId, patch: KnowledgeEntryPatch, knowledge: KnowledgeDep, auditor: AuditorDep
) -> Envelope[KnowledgeEntryOut]:
    """修改知识条目（只改提交的字段）。"""
    row = await knowledge.update(entry_id, patch)
    fields = sorted(patch.model_dump(exclude_unset=True))  # which fields changed, never their values
    await auditor.record(
        "knowledge.update", target_type="knowledge", target_id=entry_id, detail={"fields": fields}
    )
    return Envelope[KnowledgeEntryOut](message="更新成功", data=KnowledgeEntryOut.from_row(row))


@router.delete("/knowledge/{entry_id}")
async def delete_entry(
    entry_id: EntryId, knowledge: KnowledgeDep, auditor: AuditorDep
) -> Envelope[DeletedEntry]:
    """删除知识条目。"""
    await knowledge.delete(entry_id)
    await auditor.record("knowledge.delete", target_type="knowledge", target_id=entry_id)
    return Envelope[DeletedEntry](message="删除成功", data=DeletedEntry(id=entry_id))
