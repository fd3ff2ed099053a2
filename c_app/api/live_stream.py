"""Server-push event streams (issue 10): stored live events as SSE, resumable with Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from starlette.requests import Request

from ..errors import BadRequest
from ..services.live import LiveEvents


def last_event_id(request: Request) -> int | None:
    """`Last-Event-ID` (what EventSource sends on reconnect) or `?last_event_id=`; None: from now on."""
    value = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if value is None or not value.strip():
        return None
    try:
        number = int(value.strip())
    except ValueError:
        raise BadRequest("Last-Event-ID 必须是整数") from None
    if number < 0:
        raise BadRequest("Last-Event-ID 必须是整数")
    return number


async def sse_frames(
    live: LiveEvents,
    channels: Sequence[str],
    after: int | None,
    *,
    on_keepalive: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[str]:
    if after is None:  # from now on: fixed before the client hears it is connected
        after = await live.last_id()
    yield ": connected\n\n"
    async for event in live.stream(channels, after):
        if event is None:
            if on_keepalive is not None:
                await on_keepalive()
            yield ": ping\n\n"
            continue
        data = json.dumps(event.data, ensure_ascii=False, separators=(",", ":"))
        head = f"event: {event.type}\n" + (f"id: {event.id}\n" if event.id is not None else "")
        yield f"{head}data: {data}\n\n"
