"""The seed's customer-service routes: /api/v1/chat/..."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Request, UploadFile
from fastapi.responses import JSONResponse

from ....db.models import ChatSession
from ....errors import BadRequest
from ....schemas.customer import (
    ID_MAX,
    ID_PATTERN,
    ChatRequest,
    MemoryAddRequest,
    MemoryRetrieveRequest,
    SessionRequest,
    SessionResponse,
)
from ...deps import ActorDep, MemoryWriteLimit, ServicesDep, StreamLimit, UploadLimit
from ...sse import frames, wants_typed
from ...streaming import EventStreamResponse

logger = logging.getLogger(__name__)

router = APIRouter()

# Ids in paths and forms: the same rules as in bodies (1..128 characters, no control characters, no "/").
PathId = Annotated[str, Path(max_length=ID_MAX, pattern=ID_PATTERN)]
FormId = Annotated[str, Form(max_length=ID_MAX, pattern=ID_PATTERN)]


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def session_response(row: ChatSession) -> SessionResponse:
    return SessionResponse(
        session_id=row.id,
        user_id=row.user_id,
        title=row.title,
        created_at=row.created_at.isoformat(),
        message_count=row.message_count,
        last_activity=row.last_activity_at.isoformat(),
        status=row.status,
    )


def require_id(value: str, message: str) -> str:
    if not value or not value.strip():
        raise BadRequest(message)
    return value


@router.post("/stream", dependencies=[StreamLimit])
async def stream_chat(
    request: ChatRequest, http_request: Request, services: ServicesDep, actor: ActorDep
) -> EventStreamResponse:
    """流式聊天接口：以 Server-Sent Events 返回回答（`?events=typed` 返回带类型的事件）。"""
    user_id = actor.act_for(request.user_id)
    require_id(request.session_id, "会话ID不能为空")
    if not request.message.content:
        raise BadRequest("消息内容不能为空")
    turn = await services.chat.prepare(user_id=user_id, session_id=request.session_id, message=request.message)

    return EventStreamResponse(frames(turn.events(), typed=wants_typed(http_request)))


@router.post("/session/{session_id}/stop")
async def stop_generation(session_id: PathId, services: ServicesDep, actor: ActorDep) -> JSONResponse:
    """停止该会话中正在生成的回答（已生成的部分会保存并标记为中断）。"""
    require_id(session_id, "会话ID不能为空")
    stopped = await services.chat.stop(session_id, owner_id=actor.scope)
    return JSONResponse(
        content={
            "success": True,
            "message": "已停止生成" if stopped else "当前没有正在生成的回答",
            "data": {"session_id": session_id, "stopped": stopped},
        }
    )


@router.post("/session/create", response_model=SessionResponse)
async def create_session(request: SessionRequest, services: ServicesDep, actor: ActorDep) -> SessionResponse:
    """创建新的聊天会话。"""
    user_id = actor.act_for(request.user_id)
    row = await services.sessions.create(user_id, request.title, request.description)
    return session_response(row)


@router.get("/session/{session_id}", response_model=SessionResponse)
async def get_session(session_id: PathId, services: ServicesDep, actor: ActorDep) -> SessionResponse:
    """获取指定会话信息。"""
    require_id(session_id, "会话ID不能为空")
    return session_response(await services.sessions.get(session_id, owner_id=actor.scope))


@router.get("/sessions/{user_id}", response_model=list[SessionResponse])
async def get_user_sessions(
    user_id: PathId, services: ServicesDep, actor: ActorDep, limit: int = 20, offset: int = 0
) -> list[SessionResponse]:
    """分页获取用户的会话列表，按最后活动时间倒序。"""
    user_id = actor.act_for(user_id)
    if limit <= 0 or limit > 100:
        raise BadRequest("限制数量必须在1-100之间")
    if offset < 0:
        raise BadRequest("偏移量不能为负数")
    rows = await services.sessions.list_for_user(user_id, limit=limit, offset=offset)
    return [session_response(row) for row in rows]


@router.post("/upload-image", dependencies=[UploadLimit])
async def upload_image(
    services: ServicesDep,
    actor: ActorDep,
    file: Annotated[UploadFile, File()],
    # Defaults so an empty field reaches the seed's 400 checks instead of a 422.
    user_id: FormId = "",
    session_id: FormId = "",
) -> JSONResponse:
    """上传图片文件，返回访问 URL。"""
    user_id = actor.act_for(user_id)
    require_id(session_id, "会话ID不能为空")
    row = await services.uploads.save(file, user_id=user_id, session_id=session_id)
    logger.info("image uploaded: %s (%d bytes)", row.stored_name, row.size)
    return JSONResponse(
        content={
            "success": True,
            "message": "图片上传成功",
            "data": {
                "file_url": services.uploads.url_for(row),
                "filename": row.stored_name,
                "original_filename": row.original_name,
                "size": row.size,
                "content_type": row.content_type,
                "width": row.width,
                "height": row.height,
                "upload_time": row.created_at.isoformat(),
            },
        }
    )


@router.post("/memory/add", dependencies=[MemoryWriteLimit])
async def add_memory(request: MemoryAddRequest, services: ServicesDep, actor: ActorDep) -> JSONResponse:
    """向用户的私有记忆添加内容。"""
    user_id = actor.act_for(request.user_id)
    if not request.content or not request.content.strip():
        raise BadRequest("记忆内容不能为空")
    row = await services.memory.add_private(user_id, request.content, request.metadata)
    return JSONResponse(
        content={
            "success": True,
            "message": "记忆添加成功",
            "data": {"memory_id": row.id, "user_id": user_id, "created_at": row.created_at.isoformat()},
        }
    )


@router.post("/memory/retrieve")
async def retrieve_memories(request: MemoryRetrieveRequest, services: ServicesDep, actor: ActorDep) -> JSONResponse:
    """检索用户的私有、对话与公共记忆，按相关性排序。"""
    user_id = actor.act_for(request.user_id)
    if not request.query or not request.query.strip():
        raise BadRequest("查询内容不能为空")
    hits = await services.memory.search(user_id, request.query, limit=request.limit or 3)
    memories = [hit.as_item() for hit in hits][: request.limit or 10]
    return JSONResponse(
        content={
            "success": True,
            "message": "记忆检索成功",
            "data": {"query": request.query, "total_count": len(memories), "memories": memories},
        }
    )


@router.get("/health")
async def health_check(request: Request, services: ServicesDep) -> JSONResponse:
    """健康检查：数据库与检索的真实状态；降级时返回 503。"""
    checks: dict[str, str] = {"chat_service": "healthy", "session_service": "healthy", "memory_service": "healthy"}
    try:
        await services.sessions.db.ping()
    except Exception:
        logger.warning("health: database unreachable", exc_info=True)
        checks["session_service"] = "unhealthy"
    try:
        await services.memory.probe()
    except Exception:
        logger.warning("health: retrieval failed", exc_info=True)
        checks["memory_service"] = "unhealthy"
    healthy = all(value == "healthy" for value in checks.values())
    body: dict[str, Any] = {"status": "healthy" if healthy else "degraded", "timestamp": now_iso(), "services": checks}
    return JSONResponse(status_code=200 if healthy else 503, content=body)


@router.get("/stats")
async def get_stats(request: Request, services: ServicesDep, _actor: ActorDep) -> JSONResponse:
    """服务统计：会话、消息、上传数量（来自数据库），运行秒数，版本。"""
    statistics = await services.sessions.statistics()
    return JSONResponse(
        content={
            "timestamp": now_iso(),
            "uptime": round(time.monotonic() - request.app.state.started_at, 3),
            "version": request.app.version,
            "statistics": statistics,
        }
    )
