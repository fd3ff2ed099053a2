"""Cap the size of request headers: 431 in the envelope ("请求头过大") past MAX_HEADER_BYTES.

uvicorn's default parser (httptools) keeps however many header bytes a client sends; h11 has a limit
(`h11_max_incomplete_event_size`, which run_server.py sets to match). This middleware holds every
server to the same bound before anything reads the request: the total of header names and values,
and so any single header too. A WebSocket handshake over the limit is refused the same way (an HTTP
431 where the server supports denial responses, close code 1008 otherwise).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from .error_handler import envelope

TOO_LARGE = "请求头过大"
STATUS = 431  # Request Header Fields Too Large (RFC 6585)


def header_bytes(scope: Scope) -> int:
    """The bytes of a request's header names and values (what a client controls)."""
    return sum(len(name) + len(value) for name, value in scope.get("headers", ()))


class HeaderLimit:
    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or header_bytes(scope) <= self.limit:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": TOO_LARGE})
            return
        # Starlette's responses speak the WebSocket denial messages on a websocket scope.
        await envelope(STATUS, TOO_LARGE, "HTTPException")(scope, receive, send)
