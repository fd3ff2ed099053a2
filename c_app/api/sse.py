"""Wire formats for a chat turn's events: one serialiser per format.

plain (the seed's, the default for /stream): `data: <text>` per answer piece with CR/LF escaped,
    `data: {"error": "..."}` on failure, `data: [DONE]` last; other events are not sent.
typed (opt in with `?events=typed` or `Accept: application/vnd.c-app.events`):
    named SSE events with ids, `event: <type>\\nid: <n>\\ndata: <json>`, the same events the
    WebSocket sends as frames: delta, sources, handoff, suggestions, done, error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import Request

from ..schemas.events import ChatEvent, DeltaEvent, DoneEvent, ErrorEvent

TYPED_ACCEPT = "application/vnd.c-app.events"


def wants_typed(request: Request) -> bool:
    """Typed events when asked for: `?events=typed`, or `Accept: application/vnd.c-app.events`."""
    return request.query_params.get("events") == "typed" or TYPED_ACCEPT in request.headers.get("accept", "")


def event_payload(event: ChatEvent) -> dict[str, object]:
    """The JSON a typed event carries (also a WebSocket frame)."""
    return event.model_dump(mode="json")


def plain_frame(event: ChatEvent) -> str | None:
    if isinstance(event, DeltaEvent):
        return "data: " + event.text.replace("\n", "\\n").replace("\r", "\\r") + "\n\n"
    if isinstance(event, ErrorEvent):
        return "data: " + json.dumps({"error": event.message}, ensure_ascii=False) + "\n\n"
    if isinstance(event, DoneEvent):
        return "data: [DONE]\n\n"
    return None


def typed_frame(event: ChatEvent, event_id: int) -> str:
    data = json.dumps(event_payload(event), ensure_ascii=False, separators=(",", ":"))
    return f"event: {event.type}\nid: {event_id}\ndata: {data}\n\n"


async def frames(events: AsyncIterator[ChatEvent], *, typed: bool) -> AsyncIterator[str]:
    event_id = 0
    async for event in events:
        if typed:
            event_id += 1
            yield typed_frame(event, event_id)
        elif (frame := plain_frame(event)) is not None:
            yield frame
