"""The one way into a chat turn, shared by every door: POST /stream, the WebSocket, the OpenAI door."""

from __future__ import annotations

import dataclasses

from starlette.requests import HTTPConnection

from ..schemas.customer import ChatMessage
from ..security.auth import Actor
from ..services.chat_service import Turn
from .deps import check_limit


async def open_turn(
    conn: HTTPConnection, actor: Actor, *, user_id: str, session_id: str, message: ChatMessage
) -> Turn:
    """Who the turn is for (403 for someone else), the rate limit (429), the message and session
    checks (400/403), and the customer's message stored. `services.chat.answer(turn)` then streams."""
    user_id = actor.act_for(user_id)
    await check_limit(conn, "stream", user_id)
    turn: Turn = await conn.app.state.services.chat.prepare(
        user_id=user_id, session_id=session_id, message=message
    )
    return dataclasses.replace(turn, door=door_of(conn))


def door_of(conn: HTTPConnection) -> str:
    """Which door a turn came in by: the WebSocket, the OpenAI-compatible API, or POST /stream."""
    if conn.scope["type"] == "websocket":
        return "websocket"
    return "openai" if conn.url.path.startswith("/v1/") else "stream"
