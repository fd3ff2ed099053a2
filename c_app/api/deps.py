"""Dependencies shared by the routers: the services, who is acting, paging, and the session a route acts on.

Authentication arrives in one place, `get_actor`: routes only ever ask the actor which user they
may act for (`actor.act_for(user_id)`) or which owner their reads are scoped to (`actor.scope`).
The rules (AUTH_MODE none | api_key | jwt, and how refusals look) are in c_app/security/auth.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import Depends, Path, Query, Request, WebSocket
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import WebSocketException
from starlette.formparsers import MultiPartException
from starlette.requests import HTTPConnection

from ..container import Services
from ..errors import BadRequest, Forbidden
from ..schemas.customer import ID_MAX, ID_PATTERN, valid_id
from ..security.auth import (
    AGENT_NOT_CUSTOMER,
    LOOPBACK_HOSTS,
    NOT_AGENT,
    WS_POLICY_VIOLATION,
    Actor,
    Authenticator,
    authenticate_websocket,
    credential_from,
)
from ..security.rate_limit import RateLimits


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


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
    actor = authenticator.authenticate(credential_from(request.headers))
    if actor.is_agent:  # an agent is not a customer, nor a trusted backend acting for customers
        raise Forbidden(AGENT_NOT_CUSTOMER)
    return actor


ActorDep = Annotated[Actor, Depends(get_actor)]


@dataclass(frozen=True, slots=True)
class AgentActor:
    """A human agent acting on /api/v1/agent/... (issue 10)."""

    agent_id: str
    name: str
    role: str  # agent | supervisor


DEV_AGENT = "dev-agent"


def agent_from(conn: HTTPConnection, *, query_token: bool = False) -> AgentActor:
    """The agent a request or socket comes from; 401 without credentials, 403 for anyone else.

    AUTH_MODE=none (development): loopback callers only, named by X-Agent-Id / X-Agent-Name."""
    authenticator: Authenticator = conn.app.state.authenticator
    if not authenticator.enabled:
        host = conn.client.host if conn.client else ""
        if host not in LOOPBACK_HOSTS:
            raise Forbidden(NOT_AGENT)
        agent_id = conn.headers.get("x-agent-id", "").strip() or DEV_AGENT
        if not valid_id(agent_id):
            raise BadRequest("客服ID格式错误")
        # Header values are ASCII: a Chinese name arrives percent-encoded (UTF-8).
        name = unquote(conn.headers.get("x-agent-name", "")).strip()[:100] or agent_id
        return AgentActor(agent_id=agent_id, name=name, role="supervisor")
    query = conn.query_params if query_token else None
    actor = authenticator.authenticate(credential_from(conn.headers, query))
    if not actor.is_agent or actor.agent_id is None:
        raise Forbidden(NOT_AGENT)
    return AgentActor(agent_id=actor.agent_id, name=actor.agent_name or actor.agent_id, role=actor.role)


def get_agent(
    request: Request,
    _bearer_credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    _api_key_header: Annotated[str | None, Depends(_api_key)],
) -> AgentActor:
    return agent_from(request)


AgentDep = Annotated[AgentActor, Depends(get_agent)]


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


async def check_limit(conn: HTTPConnection, name: str, user_id: str | None) -> None:
    """Count one request (or WebSocket turn) against limit `name`, per user and per client address;
    429 when either is spent."""
    limits: RateLimits = conn.app.state.rate_limits
    if limits.items.get(name) is None:
        return
    identities = [f"user:{user_id[:128]}"] if user_id else []
    identities.append(f"ip:{conn.client.host if conn.client else 'unknown'}")
    await limits.check(name, *identities)


def rate_limit(name: str) -> Any:
    """A dependency counting this request against limit `name`, per user and per client address."""

    async def check(request: Request, actor: ActorDep) -> None:
        if request.app.state.rate_limits.items.get(name) is not None:
            await check_limit(request, name, actor.user_id or await _user_named_in(request))

    return Depends(check)


UploadLimit = rate_limit("upload")
MemoryWriteLimit = rate_limit("memory")
RetrieveLimit = rate_limit("retrieve")
ServicesDep = Annotated[Services, Depends(get_services)]


async def websocket_actor(websocket: WebSocket) -> Actor | None:
    """Who is on a WebSocket, before it is accepted; None after closing it (1008) when refused."""
    try:
        actor = await authenticate_websocket(websocket)
    except WebSocketException as exc:
        await websocket.close(code=exc.code, reason=exc.reason)
        return None
    if actor.is_agent:
        await websocket.close(code=WS_POLICY_VIOLATION, reason="agent cannot act as a customer")
        return None
    return actor


def require_id(value: str, message: str) -> str:
    """The seed's 400 for an empty (or blank) id."""
    if not value or not value.strip():
        raise BadRequest(message)
    return value


@dataclass(frozen=True, slots=True)
class Paging:
    limit: int
    offset: int


def paging(limit: int = 20, offset: int = 0) -> Paging:
    """`?limit=` (1-100, default 20) and `?offset=` (from 0) of a listing, with the seed's 400 messages."""
    if limit <= 0 or limit > 100:
        raise BadRequest("限制数量必须在1-100之间")
    if offset < 0:
        raise BadRequest("偏移量不能为负数")
    return Paging(limit=limit, offset=offset)


# Declare it after the actor, so a caller who is not signed in hears 401 first.
PagingDep = Annotated[Paging, Depends(paging)]


@dataclass(frozen=True, slots=True)
class ScopedSession:
    """A session a route acts on, and the owner it must belong to (None: a trusted caller, any owner)."""

    id: str
    owner: str | None


def actor_session(
    session_id: Annotated[str, Path(max_length=ID_MAX, pattern=ID_PATTERN)], actor: ActorDep
) -> ScopedSession:
    """`{session_id}` in the path, limited to the caller's own sessions (`actor.scope`)."""
    return ScopedSession(id=require_id(session_id, "会话ID不能为空"), owner=actor.scope)


ActorSessionDep = Annotated[ScopedSession, Depends(actor_session)]


def request_owner(
    actor: ActorDep, user_id: Annotated[str | None, Query(max_length=ID_MAX)] = None
) -> str | None:
    """The owner this request's reads and writes are limited to: the caller's scope, or the user a
    trusted caller narrows it to with `?user_id=` (None: a trusted caller, any owner)."""
    if user_id is None:
        return actor.scope
    return actor.act_for(user_id)


OwnerDep = Annotated[str | None, Depends(request_owner)]


def owned_session(
    session_id: Annotated[str, Path(min_length=1, max_length=ID_MAX)], owner: OwnerDep
) -> ScopedSession:
    """`{session_id}` in the path, limited to the request's owner (see `request_owner`)."""
    return ScopedSession(id=session_id, owner=owner)


OwnedSessionDep = Annotated[ScopedSession, Depends(owned_session)]
