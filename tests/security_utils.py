"""Helpers for the security tests: tokens, and a raw ASGI WebSocket handshake."""

from __future__ import annotations

import time
from typing import Any

import jwt

SECRET = "test-jwt-secret-that-is-long-enough-for-hs256"
API_KEY = "test-api-key-0123456789"


def token(sub: str, *, secret: str = SECRET, ttl: int = 3600, algorithm: str = "HS256", **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + ttl, **claims}
    return jwt.encode(payload, secret, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def jwt_settings(**extra: Any) -> dict[str, Any]:
    return {"auth_mode": "jwt", "jwt_secret": SECRET, "url_signing_secret": "sign-secret", **extra}


async def websocket_handshake(
    app: Any, path: str, *, query: str = "", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Drive one WebSocket handshake straight through the ASGI app; returns the app's first answer
    (`websocket.accept`, `websocket.close`, or `websocket.http.response.start` for a denial)."""
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"testserver"), *raw_headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
        "state": {},
    }
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        return {"type": "websocket.disconnect", "code": 1000}

    class Answered(Exception):
        pass

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] in ("websocket.accept", "websocket.close", "websocket.http.response.start"):
            raise Answered

    try:
        await app(scope, receive, send)
    except Answered:
        pass
    return sent[0] if sent else {"type": "none"}
