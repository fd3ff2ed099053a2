"""Cap request bodies while they arrive, before anything parses them.

A declared Content-Length over the limit is refused at once; a body without one (chunked) is
counted as it is read and refused the moment it passes the limit. Both answer 413 in the envelope.
(FastAPI's own max_body_size answers the declared case in plain text, hence this middleware.)
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .error_handler import envelope

TOO_LARGE = "请求体过大"


_DIGITS = re.compile(r"[0-9]{1,19}")


class BodyLimit:
    def __init__(self, app: ASGIApp, *, default: int, per_path: dict[str, int]) -> None:
        self.app = app
        self.default = default
        self.per_path = per_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)
        declared = Headers(scope=scope).get("content-length")
        # ASCII digits only ("²".isdigit() is true, and int() refuses it), and no more than a limit can need.
        if declared is not None and not (_DIGITS.fullmatch(declared) and int(declared) <= limit):
            await envelope(413, TOO_LARGE, "HTTPException")(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's body reading; FastAPI re-raises HTTPException as is.
                    raise HTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, counted, send)
