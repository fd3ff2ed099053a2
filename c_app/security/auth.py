"""Who is calling: AUTH_MODE none | api_key | jwt, resolved to an `Actor`.

- none: a trusted caller (development); the user is named in each request.
- api_key: a trusted backend holding one of API_KEYS; it acts for any user id.
- jwt: an end user; the token's `sub` is the only user the request may act for.

Refusals, the same for every route (documented in README "Security"):
- no or bad credentials: 401 "缺少认证信息" / "认证信息无效或已过期", with `WWW-Authenticate: Bearer`;
- a user id in the path, body or form that is not the caller's: 403 "无权访问该用户的数据";
- a session, memory or upload of someone else: the not-found answer of that object (404), because
  every read is scoped to the caller (`Actor.scope`), so whether it exists is never revealed;
- service-wide figures (/stats) once auth is on: only the ADMIN_TOKEN holder (`require_operator`),
  403 "无权访问服务统计" for any other valid credential.

WebSockets (`authenticate_websocket`): a handshake whose Origin is neither the app's own nor listed in
CORS_ORIGINS is refused in every mode (browsers send an Origin; other clients send none and pass);
a JWT's expiry is kept on the actor (`expires_at`), so the socket can close when it passes.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import jwt
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import WebSocketException
from starlette.websockets import WebSocket

from ..config import Settings
from ..errors import BadRequest, Forbidden, Unauthorized
from ..schemas.customer import ID_MAX, valid_id

logger = logging.getLogger(__name__)

MISSING = "缺少认证信息"
INVALID = "认证信息无效或已过期"
FOREIGN_USER = "无权访问该用户的数据"
NOT_OPERATOR = "无权访问服务统计"
NOT_AGENT = "仅限客服人员访问"
AGENT_NOT_CUSTOMER = "客服账号不能以客户身份操作"
AGENT_ROLES = ("agent", "supervisor")
FOREIGN_ORIGIN = "origin not allowed"
CHALLENGE = {"WWW-Authenticate": "Bearer"}
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}
# WebSocket close code for a refused handshake (RFC 6455 "policy violation").
WS_POLICY_VIOLATION = 1008

AuthMode = Literal["none", "api_key", "jwt"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling. user_id None: a trusted caller (AUTH_MODE none or an API key) acting for any user.
    expires_at: when the credential stops being valid (epoch seconds, leeway included; None: never)."""

    user_id: str | None
    mode: AuthMode = "none"
    expires_at: float | None = None
    # A human agent (issue 10): role agent | supervisor, their id and display name. An agent is not a
    # customer: customer routes refuse them (api/deps.py), agent routes accept nobody else.
    role: str = "customer"
    agent_id: str | None = None
    agent_name: str | None = None

    @property
    def is_agent(self) -> bool:
        return self.role in AGENT_ROLES

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    @property
    def scope(self) -> str | None:
        """The owner that reads are limited to (None: any owner)."""
        return self.user_id

    def act_for(self, user_id: str) -> str:
        """The user id a request may act for, or an error (400 empty, 422 malformed, 403 someone else)."""
        if not user_id or not user_id.strip():
            raise BadRequest("用户ID不能为空")
        if not valid_id(user_id):
            # Schemas refuse these with 422; a route that takes the id some other way gets the same answer.
            raise RequestValidationError(
                [
                    {
                        "loc": ("user_id",),
                        "msg": f"用户ID须为 1-{ID_MAX} 个字符，不含控制字符和 /",
                        "type": "value_error",
                    }
                ]
            )
        if self.user_id is not None and not hmac.compare_digest(user_id.encode(), self.user_id.encode()):
            raise Forbidden(FOREIGN_USER)
        return user_id


def _public_key(value: str) -> str:
    # PEM text (newlines may arrive escaped from an env file) or the path of a PEM file.
    text = value.replace("\\n", "\n").strip()
    if text.startswith("-----BEGIN"):
        return text
    return Path(text).expanduser().read_text(encoding="utf-8")


class Authenticator:
    """Checks credentials for one app's settings (built once: keys parsed and validated at start-up)."""

    def __init__(self, settings: Settings) -> None:
        self.mode: AuthMode = settings.auth_mode
        self.api_keys = [key.get_secret_value().encode() for key in settings.api_keys]
        self.admin_token = (settings.admin_token or "").encode()
        self.metrics_token = (
            settings.metrics_token.get_secret_value().encode() if settings.metrics_token else b""
        )
        self.origins = {_origin(origin) for origin in settings.cors_origins}
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.leeway = settings.jwt_leeway
        self.agent_keys = [_agent_key(key.get_secret_value()) for key in settings.agent_keys]
        self.jwt_key: Any = None
        self.algorithms: list[str] = []
        if self.mode == "api_key" and not self.api_keys:
            raise ValueError("AUTH_MODE=api_key needs API_KEYS")
        if self.mode == "jwt":
            if settings.jwt_public_key:
                self.jwt_key = _public_key(settings.jwt_public_key)
                self.algorithms = ["RS256"]
            elif settings.jwt_secret is not None and settings.jwt_secret.get_secret_value():
                self.jwt_key = settings.jwt_secret.get_secret_value()
                self.algorithms = ["HS256"]
            else:
                raise ValueError("AUTH_MODE=jwt needs JWT_SECRET (HS256) or JWT_PUBLIC_KEY (RS256)")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def authenticate(self, token: str | None) -> Actor:
        """The actor a credential stands for; Unauthorized when it is missing or wrong."""
        if self.mode == "none":
            return Actor(user_id=None)
        if not token:
            raise Unauthorized(MISSING, headers=CHALLENGE)
        if self.mode == "api_key":
            given = token.encode()
            # Compare against every key, so the time taken says nothing about which one nearly matched.
            matched = False
            for key in self.api_keys:
                matched |= hmac.compare_digest(given, key)
            agent: tuple[str, str, str] | None = None
            for agent_key, identity in self.agent_keys:
                if hmac.compare_digest(given, agent_key):
                    agent = identity
            if agent is not None:
                agent_id, name, role = agent
                return Actor(user_id=None, mode="api_key", role=role, agent_id=agent_id, agent_name=name)
            if not matched:
                raise Unauthorized(INVALID, headers=CHALLENGE)
            return Actor(user_id=None, mode="api_key")
        subject, expires, claims = self._jwt_claims(token)
        # The token stops being valid when PyJWT would stop accepting it: exp plus the leeway.
        claimed_role = claims.get("role")
        if claimed_role in AGENT_ROLES:
            claimed_name = claims.get("name")
            display = (
                claimed_name[:100] if isinstance(claimed_name, str) and claimed_name.strip() else subject
            )
            return Actor(
                user_id=None,
                mode="jwt",
                expires_at=expires + self.leeway,
                role=str(claimed_role),
                agent_id=subject,
                agent_name=display,
            )
        return Actor(user_id=subject, mode="jwt", expires_at=expires + self.leeway)

    def require_operator(self, headers: Headers) -> None:
        """Service-wide figures: anyone with AUTH_MODE=none (as the seed); with auth on, only
        `Authorization: Bearer <ADMIN_TOKEN>`. No credential: 401; a bad one: 401; any other valid
        one, an API key included: 403. An API key is a backend's credential for acting as customers,
        not the operator's; the operator has ADMIN_TOKEN (the admin API is theirs too)."""
        if self.mode == "none":
            return
        scheme, _, value = headers.get("authorization", "").partition(" ")
        is_bearer = scheme.lower() == "bearer"
        if self.admin_token and is_bearer and hmac.compare_digest(value.strip().encode(), self.admin_token):
            return
        self.authenticate(credential_from(headers))  # 401 when missing or wrong
        raise Forbidden(NOT_OPERATOR)

    def require_metrics(self, headers: Headers) -> None:
        """/metrics: with METRICS_TOKEN set, only `Authorization: Bearer <METRICS_TOKEN>` (or the
        operator's ADMIN_TOKEN), whatever AUTH_MODE, so a scraper holds no other right; unset, as
        the service-wide figures (`require_operator`)."""
        if not self.metrics_token:
            self.require_operator(headers)
            return
        scheme, _, value = headers.get("authorization", "").partition(" ")
        given = value.strip().encode()
        if scheme.lower() == "bearer" and given:
            matched = hmac.compare_digest(given, self.metrics_token)
            if self.admin_token:
                matched |= hmac.compare_digest(given, self.admin_token)
            if matched:
                return
            raise Unauthorized(INVALID, headers=CHALLENGE)
        raise Unauthorized(MISSING, headers=CHALLENGE)

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """A WebSocket handshake's Origin: absent (not a browser), the app's own (same host and port as
        the Host header: the chat page), or listed in CORS_ORIGINS ("*" allows any)."""
        if origin is None:
            return True
        given = _origin(origin)
        if "*" in self.origins or given in self.origins:
            return True
        parts = urlsplit(given)
        own = (host or "").strip().lower()
        return bool(own) and parts.scheme in ("http", "https") and parts.netloc == own

    def _jwt_claims(self, token: str) -> tuple[str, float, dict[str, Any]]:
        try:
            claims = jwt.decode(
                token,
                self.jwt_key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as exc:
            # The reason is useful to an operator, never the token itself.
            logger.debug("jwt refused: %s", type(exc).__name__)
            raise Unauthorized(INVALID, headers=CHALLENGE) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not valid_id(subject):
            raise Unauthorized(INVALID, headers=CHALLENGE)
        return subject, float(claims["exp"]), claims  # PyJWT checked that exp is a number


def _agent_key(spec: str) -> tuple[bytes, tuple[str, str, str]]:
    """One AGENT_KEYS item, `key:agent_id:显示名[:supervisor]`: the key and (agent id, name, role)."""
    fields = [field.strip() for field in spec.split(":")]
    if len(fields) < 2 or not fields[0] or not valid_id(fields[1]):
        raise ValueError("AGENT_KEYS items are key:agent_id:name[:supervisor]")
    name = fields[2] if len(fields) > 2 and fields[2] else fields[1]
    role = "supervisor" if len(fields) > 3 and fields[3] == "supervisor" else "agent"
    return fields[0].encode(), (fields[1], name[:100], role)


def _origin(value: str) -> str:
    """An origin as compared: trimmed, lower case, without a trailing slash."""
    return value.strip().rstrip("/").lower()


def credential_from(headers: Headers, query: QueryParams | None = None) -> str | None:
    """The bearer token or API key a request carries (header first; `?token=` only where allowed)."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    api_key = headers.get("x-api-key", "").strip()
    if api_key:
        return api_key
    if query is not None:
        token = query.get("token", "").strip()
        if token:
            return token
    return None


async def authenticate_websocket(websocket: WebSocket) -> Actor:
    """The actor of a WebSocket handshake: `?token=` (browsers cannot set headers) or the Authorization /
    X-API-Key header. Refuses with close code 1008 before the socket is accepted (the client sees 403):
    a foreign Origin (cross-site WebSocket hijacking: browsers attach no CORS check to a handshake, so
    without this any page could talk to the service as its visitor), then a missing or bad credential."""
    authenticator: Authenticator = websocket.app.state.authenticator
    if not authenticator.origin_allowed(websocket.headers.get("origin"), websocket.headers.get("host")):
        raise WebSocketException(code=WS_POLICY_VIOLATION, reason=FOREIGN_ORIGIN)
    try:
        return authenticator.authenticate(credential_from(websocket.headers, websocket.query_params))
    except Unauthorized as exc:
        raise WebSocketException(code=WS_POLICY_VIOLATION, reason=exc.message) from None
