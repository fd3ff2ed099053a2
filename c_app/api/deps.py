"""Dependencies shared by the routers: the services, and who is acting.

Authentication arrives in one place, `get_actor`: routes only ever ask the actor which user they
may act for (`actor.act_for(user_id)`) or which owner their reads are scoped to (`actor.scope`).
The rules (AUTH_MODE none | api_key | jwt, and how refusals look) are in c_app/security/auth.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, WebSocket
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import WebSocketException
from starlette.formparsers import MultiPartException

from ..security.auth import Actor, Authenticator, authenticate_websocket, credential_from
from ..security.rate_limit import RateLimits
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


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="BearerAuth",
    description="AUTH_MODE=api_key: one of API_KEYS; AUTH_MODE=jwt: the user's token (sub = user id)",
)
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKeyAuth")


def get_actor(
    request: Request,
    _bearer_credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _api_key_header: Annotated[str | None, Depends(_api_key)],
) -> Actor:
    """Who is acting, from the Authorization / X-API-Key header (AUTH_MODE none: a trusted caller).

    The two security parameters only document the schemes in OpenAPI; the headers are read here."""
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.authenticate(credential_from(request.headers))


ActorDep = Annotated[Actor, Depends(get_actor)]


async def _user_named_in(request: Request) -> str | None:
    """The user id a request names (path, JSON body or form), for per-user counting without auth."""
    value = request.path_params.get("user_id")
    if isinstance(value, str) and value:
        return value
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("application/json"):
            # FastAPI has already read the body; Starlette caches it, so this costs a parse, not a read.
            body = await request.json()
            # "user" is how the OpenAI-compatible door names the customer.
            value = (body.get("user_id") or body.get("user")) if isinstance(body, dict) else None
        elif content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            value = (await request.form()).get("user_id")
    except (ValueError, MultiPartException):
        return None  # a body FastAPI will refuse anyway
    return value if isinstance(value, str) and value else None


def rate_limit(name: str) -> Any:
    """A dependency counting this request against limit `name`, per user and per client address."""

    async def check(request: Request, actor: ActorDep) -> None:
        limits: RateLimits = request.app.state.rate_limits
        if limits.items.get(name) is None:
            return
        identities = []
        user_id = actor.user_id or await _user_named_in(request)
        if user_id:
            identities.append(f"user:{user_id[:128]}")
        identities.append(f"ip:{request.client.host if request.client else 'unknown'}")
        await limits.check(name, *identities)

    return Depends(check)


StreamLimit = rate_limit("stream")
UploadLimit = rate_limit("upload")
MemoryWriteLimit = rate_limit("memory")
ServicesDep = Annotated[Services, Depends(get_services)]


async def websocket_actor(websocket: WebSocket) -> Actor | None:
    """Who is on a WebSocket, before it is accepted; None after closing it (1008) when refused."""
    try:
        return await authenticate_websocket(websocket)
    except WebSocketException as exc:
        await websocket.close(code=exc.code, reason=exc.reason)
        return None
