"""Wire formats for a chat turn's events: one serialiser per format.

plain (the seed's, the default for /stream): `data: <text>` per answer piece with CR/LF escaped,
    `data: {"error": "..."}` on failure, `data: [DONE]` last; other events are not sent.
    A piece is never mistaken for those two (see `plain_frame`), and one event's escapes undo exactly.
typed (opt in with `?events=typed` or `Accept: application/vnd.c-app.events`):
    named SSE events with ids, `event: <type>\\nid: <n>\\ndata: <json>`, the same events the
    WebSocket sends as frames: delta, sources, handoff, suggestions, done, error.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator

from fastapi import Request

from ..schemas.events import ChatEvent, DeltaEvent, DoneEvent, ErrorEvent

TYPED_ACCEPT = "application/vnd.c-app.events"


def wants_typed(request: Request) -> bool:
    """Typed events when asked for: `?events=typed`, or `Accept: application/vnd.c-app.events`."""
    return request.query_params.get("events") == "typed" or TYPED_ACCEPT in request.headers.get("accept", "")


def event_payload(event: ChatEvent) -> dict[str, object]:
    """The JSON a typed event carries (also a WebSocket frame)."""
    return event.model_dump(mode="json")


# Where a piece of answer is cut so that no plain event is ambiguous:
# - between a literal backslash and a literal "n"/"r": within one event `\n`/`\r` is then always an
#   escaped line break (a literal backslash before an escaped one, `\\n`, undoes right: the
#   backslash first, then the break), so a reader that undoes the escapes per event gets the text back;
# - after the leading bracket of a piece that starts (blanks aside) with "{" or "[" and has more:
#   `[DONE]` and every JSON object or array (`{"error": ...}`) begins so, and a lone bracket is
#   neither, so no piece equals the terminator or parses as an error, however a reader trims or parses.
# Text without those is framed exactly as the seed did: one event, `data: <text>`.
_BACKSLASH_ESCAPE = re.compile(r"(?<=\\)(?=[nr])")
_LEADING_BRACKET = re.compile(r"[\s\ufeff]*[{\[]")


def _plain_pieces(text: str) -> Iterator[str]:
    for part in _BACKSLASH_ESCAPE.split(text):
        while (lead := _LEADING_BRACKET.match(part)) and lead.end() < len(part):
            yield part[: lead.end()]
            part = part[lead.end() :]
        yield part


def plain_frame(event: ChatEvent) -> str | None:
    if isinstance(event, DeltaEvent):
        return "".join(
            "data: " + piece.replace("\n", "\\n").replace("\r", "\\r") + "\n\n"
            for piece in _plain_pieces(event.text)
        )
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
