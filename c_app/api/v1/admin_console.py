"""The operator console's routes, behind ADMIN_TOKEN (the /admin page draws them):

GET  /api/v1/admin/stats/turns|outcomes|feedback?days=N     one point per UTC day, oldest first
GET  /api/v1/admin/stats/top-questions|top-entries?days=N&limit=10
GET  /api/v1/admin/gaps?kind=all|no_match|clarified|disliked|handoff&days=N&page=&page_size=
GET  /api/v1/admin/gaps?...&sort=recent|count
POST /api/v1/admin/gaps/resolve                             {"question", "entry_id"}: add as a similar question;
                                                            {"question", "answer"[, "title", "category"]}: a new entry
GET  /api/v1/admin/conversations?user_id=&since=&until=&outcome=&feedback=&q=&page=&page_size=
GET  /api/v1/admin/conversations/{session_id}               one conversation (audited: a customer's data)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from ...errors import BadRequest
from ...schemas.common import Envelope
from ...schemas.console import (
    ConversationDetail,
    ConversationPage,
    FeedbackStats,
    GapKind,
    GapPage,
    GapSort,
    Outcome,
    OutcomeStats,
    Rating,
    ResolveGapRequest,
    TopEntries,
    TopQuestions,
    TurnStats,
)
from ...schemas.customer import ID_MAX, ID_PATTERN
from ...schemas.knowledge import KnowledgeEntryOut
from ...services.console_service import ConsoleService
from ..deps import ServicesDep
from .admin import AuditorDep, require_admin

router = APIRouter(dependencies=[Depends(require_admin)])


def get_console(services: ServicesDep) -> ConsoleService:
    return services.console


ConsoleDep = Annotated[ConsoleService, Depends(get_console)]
Days = Annotated[int, Query(ge=1, le=366, description="最近几天（按 UTC 日期，含今天）")]
Limit = Annotated[int, Query(ge=1, le=50)]
Page = Annotated[int, Query(ge=1, le=100_000)]
PageSize = Annotated[int, Query(ge=1, le=100)]
SessionId = Annotated[str, Path(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN)]


@router.get("/stats/turns")
async def turn_stats(console: ConsoleDep, days: Days = 30) -> Envelope[TurnStats]:
    """每天的回答数（助手消息），最早的一天在前，没有回答的日子为 0。"""
    return Envelope[TurnStats](message="获取成功", data=await console.turns(days=days))


@router.get("/stats/outcomes")
async def outcome_stats(console: ConsoleDep, days: Days = 30) -> Envelope[OutcomeStats]:
    """每天各结果（answered、clarified、no_match、handoff、smalltalk、blocked）的回答数。"""
    return Envelope[OutcomeStats](message="获取成功", data=await console.outcomes(days=days))


@router.get("/stats/feedback")
async def feedback_stats(console: ConsoleDep, days: Days = 30) -> Envelope[FeedbackStats]:
    """每天收到的点赞与点踩数（按评价时间）。"""
    return Envelope[FeedbackStats](message="获取成功", data=await console.feedback(days=days))


@router.get("/stats/top-questions")
async def top_questions(console: ConsoleDep, days: Days = 30, limit: Limit = 10) -> Envelope[TopQuestions]:
    """客户最常问的问题（按原文去首尾空白分组）。"""
    return Envelope[TopQuestions](
        message="获取成功", data=await console.top_questions(days=days, limit=limit)
    )


@router.get("/stats/top-entries")
async def top_entries(console: ConsoleDep, days: Days = 30, limit: Limit = 10) -> Envelope[TopEntries]:
    """回答中最常引用的知识库条目。"""
    return Envelope[TopEntries](message="获取成功", data=await console.top_entries(days=days, limit=limit))


@router.get("/gaps")
async def list_gaps(
    console: ConsoleDep,
    kind: Annotated[GapKind, Query()] = "all",
    days: Days = 30,
    page: Page = 1,
    page_size: PageSize = 20,
    sort: Annotated[GapSort, Query()] = "recent",
) -> Envelope[GapPage]:
    """知识库缺口：未能直接回答、需澄清、转人工或被点踩的客户问题，按归一化后的问题分组并合并同义问法，
    最近的在前（sort=count：次数最多的在前）；知识库已收录（问题或相似问题归一化后相同）的不再列出。
    每项附次数、首次/最近出现时间、其他问法示例、最接近的 3 个知识条目，以及客户在澄清时选中最多的条目（chosen_entry_id）。"""
    data = await console.gaps(kind=kind, days=days, page=page, page_size=page_size, sort=sort)
    return Envelope[GapPage](message="获取成功", data=data)


@router.post("/gaps/resolve")
async def resolve_gap(
    request: ResolveGapRequest, console: ConsoleDep, auditor: AuditorDep
) -> Envelope[KnowledgeEntryOut]:
    """解决缺口：提供 entry_id 时把问题加为该条目的相似问题（已有则不重复）；提供 answer 时以该问题新建条目。返回该条目。"""
    if request.answer is not None:
        created = await console.resolve_gap_with_new_entry(
            question=request.question, answer=request.answer, title=request.title, category=request.category
        )
        await auditor.record(
            "knowledge.create", target_type="knowledge", target_id=created.id, detail={"source": "gaps"}
        )
        return Envelope[KnowledgeEntryOut](message="已新建知识条目", data=KnowledgeEntryOut.from_row(created))
    assert request.entry_id is not None  # the request holds exactly one of the two
    row, changed = await console.resolve_gap(question=request.question, entry_id=request.entry_id)
    await auditor.record(
        "knowledge.update",
        target_type="knowledge",
        target_id=request.entry_id,
        detail={"fields": ["similar_questions"] if changed else [], "source": "gaps", "changed": changed},
    )
    return Envelope[KnowledgeEntryOut](message="已添加为相似问题", data=KnowledgeEntryOut.from_row(row))


@router.get("/conversations")
async def list_conversations(
    console: ConsoleDep,
    user_id: Annotated[str | None, Query(max_length=ID_MAX, pattern=ID_PATTERN)] = None,
    since: Annotated[datetime | None, Query(description="最后活动时间下限，ISO 8601，无时区按 UTC")] = None,
    until: Annotated[datetime | None, Query(description="最后活动时间上限，ISO 8601，无时区按 UTC")] = None,
    outcome: Annotated[Outcome | None, Query()] = None,
    feedback: Annotated[Rating | None, Query()] = None,
    q: Annotated[str | None, Query(max_length=200, description="消息内容包含（不区分大小写）")] = None,
    page: Page = 1,
    page_size: PageSize = 20,
) -> Envelope[ConversationPage]:
    """会话列表，最近活动的在前；可按用户、时间、回答结果、评价与消息内容筛选。"""
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and since > until:
        raise BadRequest("since 不能晚于 until")
    data = await console.conversations(
        page=page,
        page_size=page_size,
        user_id=user_id,
        since=since,
        until=until,
        outcome=outcome,
        feedback=feedback,
        text=q.strip() if q else None,
    )
    return Envelope[ConversationPage](message="获取成功", data=data)


@router.get("/conversations/{session_id}")
async def get_conversation(
    session_id: SessionId, console: ConsoleDep, auditor: AuditorDep
) -> Envelope[ConversationDetail]:
    """一个会话及其全部消息（只读）；查看会记入审计日志。"""
    data = await console.conversation(session_id)
    await auditor.record(
        "conversation.read",
        target_type="session",
        target_id=session_id,
        customer_id=data.session.user_id,
        detail={"messages": len(data.messages)},
    )
    return Envelope[ConversationDetail](message="获取成功", data=data)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
