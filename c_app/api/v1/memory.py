"""A user's private memories beside the seed's add: /api/v1/chat/memory/private/{user_id}/..."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from ...errors import BadRequest
from ...schemas.common import Envelope
from ...schemas.customer import ID_MAX
from ...schemas.knowledge import DeletedMemory, PrivateMemoryOut, PrivateMemoryPage, PrivateMemoryUpdate
from ..deps import ActorDep, MemoryWriteLimit, PagingDep, ServicesDep

router = APIRouter()

UserId = Annotated[str, Path(max_length=ID_MAX)]
MemoryId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("/memory/private/{user_id}")
async def list_private_memories(
    user_id: UserId, services: ServicesDep, actor: ActorDep, page: PagingDep
) -> Envelope[PrivateMemoryPage]:
    """分页获取用户的私有记忆，最新的在前。"""
    user_id = actor.act_for(user_id)
    rows, total = await services.memory.list_private(user_id, offset=page.offset, limit=page.limit)
    return Envelope[PrivateMemoryPage](
        message="记忆获取成功",
        data=PrivateMemoryPage(
            user_id=user_id,
            total=total,
            limit=page.limit,
            offset=page.offset,
            memories=[PrivateMemoryOut.from_row(row) for row in rows],
        ),
    )


@router.put("/memory/private/{user_id}/{memory_id}", dependencies=[MemoryWriteLimit])
async def update_private_memory(
    user_id: UserId, memory_id: MemoryId, request: PrivateMemoryUpdate, services: ServicesDep, actor: ActorDep
) -> Envelope[PrivateMemoryOut]:
    """修改用户的一条私有记忆（内容和/或元数据）。"""
    user_id = actor.act_for(user_id)
    if request.content is not None and not request.content.strip():
        raise BadRequest("记忆内容不能为空")
    if request.content is None and request.metadata is None:
        raise BadRequest("请提供要修改的内容或元数据")
    row = await services.memory.update_private(
        user_id, memory_id, content=request.content, metadata=request.metadata
    )
    return Envelope[PrivateMemoryOut](message="记忆更新成功", data=PrivateMemoryOut.from_row(row))


@router.delete("/memory/private/{user_id}/{memory_id}", dependencies=[MemoryWriteLimit])
async def delete_private_memory(
    user_id: UserId, memory_id: MemoryId, services: ServicesDep, actor: ActorDep
) -> Envelope[DeletedMemory]:
    """删除用户的一条私有记忆。"""
    user_id = actor.act_for(user_id)
    await services.memory.delete_private(user_id, memory_id)
    return Envelope[DeletedMemory](
        message="记忆删除成功", data=DeletedMemory(memory_id=memory_id, user_id=user_id)
    )
