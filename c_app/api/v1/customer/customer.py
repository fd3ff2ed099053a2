"""The seed's customer-service routes: /api/v1/chat/..."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Request, Response, UploadFile

from ....errors import BadRequest
from ....schemas.common import Envelope
from ....schemas.customer import (
    ID_MAX,
    ID_PATTERN,
    ChatRequest,
    MemoryAdded,
    MemoryAddRequest,
    MemoryItem,
    MemoryRetrieveRequest,
    RetrievedMemories,
    SessionRequest,
    SessionResponse,
    StopResult,
    UploadData,
)
from ....schemas.system import HealthResponse, ServiceChecks, Statistics, StatsResponse
from ...deps import (
    ActorDep,
    ActorSessionDep,
    MemoryWriteLimit,
    PagingDep,
    RetrieveLimit,
    ServicesDep,
    UploadLimit,
    require_id,
)
from ...sse import frames, wants_typed
from ...streaming import EventStreamResponse
from ...turns import open_turn

logger = logging.getLogger(__name__)

router = APIRouter()

# Ids in paths and forms: the same rules as in bodies (1..128 characters, no control characters, no "/").
PathId = Annotated[str, Path(max_length=ID_MAX, pattern=ID_PATTERN)]
FormId = Annotated[str, Form(max_length=ID_MAX, pattern=ID_PATTERN)]


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@router.post(
    "/stream",
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE"}},
)
async def stream_chat(
    request: ChatRequest, http_request: Request, services: ServicesDep, actor: ActorDep
) -> EventStreamResponse:
    """流式聊天接口：以 Server-Sent Events 返回回答（`?events=typed` 返回带类型的事件）。"""
    turn = await open_turn(
        http_request, actor, user_id=request.user_id, session_id=request.session_id, message=request.message
    )
    return EventStreamResponse(frames(services.chat.answer(turn), typed=wants_typed(http_request)))


@router.post("/session/{session_id}/stop")
async def stop_generation(session: ActorSessionDep, services: ServicesDep) -> Envelope[StopResult]:
    """停止该会话中正在生成的回答（已生成的部分会保存并标记为中断）。"""
    stopped = await services.chat.stop(session.id, owner_id=session.owner)
    return Envelope[StopResult](
        message="已停止生成" if stopped else "当前没有正在生成的回答",
        data=StopResult(session_id=session.id, stopped=stopped),
    )


@router.post("/session/create")
async def create_session(request: SessionRequest, services: ServicesDep, actor: ActorDep) -> SessionResponse:
    """创建新的聊天会话。"""
    user_id = actor.act_for(request.user_id)
    row = await services.sessions.create(user_id, request.title, request.description)
    return SessionResponse.from_row(row)


@router.get("/session/{session_id}")
async def get_session(session: ActorSessionDep, services: ServicesDep) -> SessionResponse:
    """获取指定会话信息。"""
    return SessionResponse.from_row(await services.sessions.get(session.id, owner_id=session.owner))


@router.get("/sessions/{user_id}")
async def get_user_sessions(
    user_id: PathId, services: ServicesDep, actor: ActorDep, page: PagingDep
) -> list[SessionResponse]:
    """分页获取用户的会话列表，按最后活动时间倒序。"""
    user_id = actor.act_for(user_id)
    rows = await services.sessions.list_for_user(user_id, limit=page.limit, offset=page.offset)
    return [SessionResponse.from_row(row) for row in rows]


@router.post("/upload-image", dependencies=[UploadLimit])
async def upload_image(
    services: ServicesDep,
    actor: ActorDep,
    file: Annotated[UploadFile, File()],
    # Defaults so an empty field reaches the seed's 400 checks instead of a 422.
    user_id: FormId = "",
    session_id: FormId = "",
) -> Envelope[UploadData]:
    """上传图片文件，返回访问 URL。"""
    user_id = actor.act_for(user_id)
    require_id(session_id, "会话ID不能为空")
    row = await services.uploads.save(file, user_id=user_id, session_id=session_id)
    logger.info("image uploaded: %s (%d bytes)", row.stored_name, row.size)
    return Envelope[UploadData](
        message="图片上传成功", data=UploadData.from_row(row, url=services.uploads.url_for(row))
    )


@router.post("/memory/add", dependencies=[MemoryWriteLimit])
async def add_memory(
    request: MemoryAddRequest, services: ServicesDep, actor: ActorDep
) -> Envelope[MemoryAdded]:
    """向用户的私有记忆添加内容。"""
    user_id = actor.act_for(request.user_id)
    if not request.content or not request.content.strip():
        raise BadRequest("记忆内容不能为空")
    row = await services.memory.add_private(user_id, request.content, request.metadata)
    return Envelope[MemoryAdded](message="记忆添加成功", data=MemoryAdded.from_row(row))


@router.post("/memory/retrieve", dependencies=[RetrieveLimit])
async def retrieve_memories(
    request: MemoryRetrieveRequest, services: ServicesDep, actor: ActorDep
) -> Envelope[RetrievedMemories]:
    """检索用户的私有、对话与公共记忆，按相关性排序。"""
    user_id = actor.act_for(request.user_id)
    if not request.query or not request.query.strip():
        raise BadRequest("查询内容不能为空")
    hits = await services.memory.search(user_id, request.query, limit=request.limit or 3)
    memories = [MemoryItem.from_hit(hit) for hit in hits][: request.limit or 10]
    return Envelope[RetrievedMemories](
        message="记忆检索成功",
        data=RetrievedMemories(query=request.query, total_count=len(memories), memories=memories),
    )


@router.get(
    "/health", responses={503: {"model": HealthResponse, "description": "服务降级（status 为 degraded）"}}
)
async def health_check(response: Response, services: ServicesDep) -> HealthResponse:
    """健康检查：数据库与检索的真实状态；降级时返回 503。"""
    checks = ServiceChecks()
    try:
        await services.db.ping()
    except Exception:
        logger.warning("health: database unreachable", exc_info=True)
        checks.session_service = "unhealthy"
    try:
        await services.sync.probe()
    except Exception:
        logger.warning("health: retrieval failed", exc_info=True)
        checks.memory_service = "unhealthy"
    healthy = all(value == "healthy" for value in checks.model_dump().values())
    if not healthy:
        response.status_code = 503
    return HealthResponse(status="healthy" if healthy else "degraded", timestamp=now_iso(), services=checks)


@router.get("/stats", openapi_extra={"security": [{"BearerAuth": []}]})  # ADMIN_TOKEN once auth is on
async def get_stats(request: Request, services: ServicesDep) -> StatsResponse:
    """服务统计：会话、消息、上传数量（来自数据库），运行秒数，版本。

    AUTH_MODE=none: open, as before. With auth on these are service-wide figures, the operator's:
    only `Authorization: Bearer <ADMIN_TOKEN>`; no or a bad credential 401, any other (a customer's
    JWT, an API key) 403 "无权访问服务统计"."""
    request.app.state.authenticator.require_operator(request.headers)
    statistics: dict[str, Any] = dict(await services.sessions.statistics())
    statistics["agents"] = await services.agents.stats()
    return StatsResponse(
        timestamp=now_iso(),
        uptime=round(time.monotonic() - request.app.state.started_at, 3),
        version=request.app.version,
        statistics=Statistics.model_validate(statistics),
    )
