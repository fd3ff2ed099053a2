"""Dependencies shared by the routers: the services, and who is acting.

Authentication arrives in one place, `get_actor`: routes only ever ask the actor which user they
may act for (`actor.act_for(user_id)`) or which owner their reads are scoped to (`actor.scope`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ..errors import BadRequest
from ..services.chat_service import ChatService
from ..services.memory_service import MemoryService
from ..services.session_service import SessionService
from ..services.upload_service import UploadService


@dataclass(slots=True)
class Services:
    sessions: SessionService
    memory: MemoryService
    uploads: UploadService
    chat: ChatService


def get_services(request: Request) -> Services:
    return request.app.state.services


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling. user_id None: a trusted caller (no auth configured) acting for any user."""

    user_id: str | None

    @property
    def scope(self) -> str | None:
        """The owner that reads are limited to (None: any owner)."""
        return self.user_id

    def act_for(self, user_id: str) -> str:
        """The user id a request may act for, or an error."""
        if not user_id:
            raise BadRequest("用户ID不能为空")
        return user_id


def get_actor(request: Request) -> Actor:
    # AUTH_MODE=none: the caller is trusted and names the user in the request itself.
    return Actor(user_id=None)


ServicesDep = Annotated[Services, Depends(get_services)]
ActorDep = Annotated[Actor, Depends(get_actor)]
