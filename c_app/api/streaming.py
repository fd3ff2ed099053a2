"""A streaming response that notices a client leaving at once and always closes its generator.

Starlette's StreamingResponse, on ASGI 2.4 servers, only learns of a disconnect when a write
fails, and leaves the body generator suspended (closed whenever the garbage collector gets to it).
For a chat turn that means the model keeps generating for nobody. Here a watcher cancels the
stream the moment `http.disconnect` arrives, and the generator is closed in every case, so the
turn's own cleanup (store the partial answer, close the upstream request) runs straight away.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, content: Any, **kwargs: Any) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **kwargs.pop("headers", {})}
        super().__init__(content, headers=headers, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                try:
                    await self.stream_response(send)
                except OSError:
                    pass  # the client went away mid-write
                group.cancel_scope.cancel()
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()
