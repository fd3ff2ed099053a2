"""A user's private memories beside the seed's add: /api/v1/chat/memory/private/{user_id}/..."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from ...db.models import Memory
from ...errors import BadRequest
from ...schemas.customer import ID_MAX
from ...schemas.knowledge import PrivateMemoryUpdate
from ..deps import ActorDep, ServicesDep

router = APIRouter()

UserId = Annotated[str, Path(max_length=ID_MAX)]
MemoryId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def memory_item(row: Memory) -> dict[str, Any]:
    return {
        "memory_id": row.id,
        "user_id": row.owner_id,
        "content": row.content,
        "metadata": row.meta,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


@router.get("/memory/private/{user_id}")
async def list_private_memories(
    user_id: UserId, services: ServicesDep, actor: ActorDep, limit: int = 20, offset: int = 0
) -> JSONResponse:
    """分页获取用户的私有记忆，最新的在前。"""
    user_id = actor.act_for(user_id)
    if limit <= 0 or limit > 100:
        raise BadRequest("限制数量必须在1-100之间")
    if offset < 0:
        raise BadRequest("偏移量不能为负数")
    rows, total = await services.memory.list_private(user_id, offset=offset, limit=limit)
    return JSONResponse(
        content={
            "success": True,
            "message": "记忆获取成功",
            "data": {
                "user_id": user_id,
                "total": total,
                "limit": limit,
                "offset": offset,
                "memories": [memory_item(row) for row in rows],
            },
        }
    )


@router.put("/memory/private/{user_id}/{memory_id}")
async def update_private_memory(
    user_id: UserId, memory_id: MemoryId, request: PrivateMemoryUpdate, services: ServicesDep, actor: ActorDep
) -> JSONResponse:
    """修改用户的一条私有记忆（内容和/或元数据）。"""
    user_id = actor.act_for(user_id)
    if request.content is not None and not request.content.strip():
        raise BadRequest("记忆内容不能为空")
    if request.content is None and request.metadata is None:
        raise BadRequest("请提供要修改的内容或元数据")
    row = await services.memory.update_private(
        user_id, memory_id, content=request.content, metadata=request.metadata
    )
    return JSONResponse(content={"success": True, "message": "记忆更新成功", "data": memory_item(row)})


@router.delete("/memory/private/{user_id}/{memory_id}")
async def delete_private_memory(
    user_id: UserId, memory_id: MemoryId, services: ServicesDep, actor: ActorDep
) -> JSONResponse:
    """删除用户的一条私有记忆。"""
    user_id = actor.act_for(user_id)
    await services.memory.delete_private(user_id, memory_id)
    return JSONResponse(
        content={
            "success": True,
            "message": "记忆删除成功",
            "data": {"memory_id": memory_id, "user_id": user_id},
        }
    )
