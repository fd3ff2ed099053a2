"""The WebSocket channel: the same chat turn as /stream, framed as typed JSON messages.

Client → server frames (JSON text):
    {"type": "message", "user_id", "session_id", "message": {"role": "user", "content": ...}}
    {"type": "stop"}                 end the answer being generated (stored as interrupted)
    {"type": "ping"} / {"type": "pong"}
    {"type": "subscribe", "session_id"}   follow the session's live events (issue 10; a message does too)
    {"type": "typing", "session_id"} / {"type": "read", "session_id", "message_id"}   to the agent
Server → client frames: {"type": "delta"|"sources"|"handoff"|"suggestions"|"done"|"error", ...}
    as in c_app/schemas/events.py, plus {"type": "ready"} on connect, {"type": "ping"} heartbeats
    and {"type": "pong"} answers; the followed session's live events (an agent's messages, typing,
    queue position, closed) as {"type": <event>, "id": n, ...} (docs/agent-api.md).
Several turns run one after another on one connection; a message sent while a turn is running
is refused with an error frame. Malformed frames get an error frame and the connection stays.
Close codes (RFC 6455): 1000 normal, 1001 heartbeat lost / server going away, 1003 binary data,
1008 refused credentials or Origin (before accepting: the client sees HTTP 403) and an expired token
(reason "token expired"), 1009 frame too large.

A socket lives no longer than its credential: a JWT's `exp` closes it (1008) at that moment, and every
frame is checked against it too, so neither heartbeats nor a turn sent at the last second extend it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from ...container import Services
from ...errors import AppError
from ...schemas.customer import ChatRequest
from ...schemas.events import ChatEvent, ErrorEvent
from ...security.auth import WS_POLICY_VIOLATION, Actor
from ...services.live import session_channel
from ..deps import websocket_actor
from ..sse import event_payload
from ..turns import open_turn

logger = logging.getLogger(__name__)

router = APIRouter()

TOKEN_EXPIRED = "token expired"


class _Connection:
    def __init__(self, websocket: WebSocket, services: Services) -> None:
        self.ws = websocket
        self.services = services
        settings = services.chat.settings
        self.max_frame = settings.max_request_bytes
        self.heartbeat = settings.ws_heartbeat_seconds
        self.turn_task: asyncio.Task[None] | None = None
        self.turn_session = ""
        self.send_lock = asyncio.Lock()
        self.last_seen = asyncio.get_running_loop().time()
        self.actor = Actor(user_id=None)
        self.closed = False
        self.follow_task: asyncio.Task[None] | None = None
        self.followed = ""

    async def send(self, payload: dict[str, Any]) -> None:
        async with self.send_lock:
            if self.closed:
                return  # the socket is being closed (expiry, heartbeat): nothing more goes out
            await self.ws.send_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))

    async def close(self, code: int, reason: str) -> None:
        """Close once, after any frame being sent; later sends are dropped."""
        async with self.send_lock:
            if self.closed:
                return
            self.closed = True
            with contextlib.suppress(Exception):
                await self.ws.close(code=code, reason=reason)

    async def error(self, message: str, code: int | None = None) -> None:
        payload: dict[str, Any] = {"type": "error", "message": message}
        if code is not None:
            payload["code"] = code
        await self.send(payload)

    async def run(self) -> None:
        actor = await websocket_actor(self.ws)
        if actor is None:
            return
        self.actor = actor
        await self.ws.accept()
        await self.send({"type": "ready"})
        watchers = [asyncio.create_task(self._heartbeat())]
        if actor.expires_at is not None:
            watchers.append(asyncio.create_task(self._expiry(actor.expires_at)))
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect" or self.closed:
                    return
                if self.actor.expired():
                    # Checked on every frame as well as by the timer: no turn, no pong after expiry.
                    await self.close(WS_POLICY_VIOLATION, TOKEN_EXPIRED)
                    return
                self.last_seen = asyncio.get_running_loop().time()
                text = message.get("text")
                if text is None:
                    await self.close(1003, "binary frames are not supported")
                    return
                if len(text.encode()) > self.max_frame:
                    await self.close(1009, "frame too large")
                    return
                await self.handle(text)
        except WebSocketDisconnect:
            return
        finally:
            for watcher in watchers:
                watcher.cancel()
            if self.follow_task is not None:
                self.follow_task.cancel()
                with contextlib.suppress(BaseException):
                    await self.follow_task
            if self.turn_task is not None and not self.turn_task.done():
                self.turn_task.cancel()
                with contextlib.suppress(BaseException):
                    await self.turn_task

    async def handle(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            await self.error("消息格式错误：不是合法的 JSON", 400)
            return
        if not isinstance(frame, dict):
            await self.error("消息格式错误：应为 JSON 对象", 400)
            return
        kind = frame.get("type", "message")
        if kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "pong":
            pass
        elif kind == "stop":
            if self.turn_task is not None and not self.turn_task.done():
                self.services.chat.interrupt(self.turn_session)
        elif kind == "message":
            await self.start_turn(frame)
        elif kind in ("subscribe", "typing", "read"):
            await self.live_frame(kind, frame)
        else:
            await self.error(f"未知的消息类型: {str(kind)[:32]}", 400)

    async def start_turn(self, frame: dict[str, Any]) -> None:
        if self.actor.expired():
            await self.close(WS_POLICY_VIOLATION, TOKEN_EXPIRED)
            return
        if self.turn_task is not None and not self.turn_task.done():
            await self.error("上一条消息仍在回答中，请稍候或先停止", 409)
            return
        try:
            request = ChatRequest.model_validate(frame)
        except ValidationError:
            await self.error("请求参数格式错误", 422)
            return
        try:
            # The same entry as POST /stream: acting user, rate limit, checks, the question stored.
            turn = await open_turn(
                self.ws,
                self.actor,
                user_id=request.user_id,
                session_id=request.session_id,
                message=request.message,
            )
        except AppError as exc:
            await self.error(exc.message, exc.status_code)
            return
        self.turn_session = turn.session_id
        await self.follow(turn.session_id)
        self.turn_task = asyncio.create_task(self._stream(self.services.chat.answer(turn)))

    async def live_frame(self, kind: str, frame: dict[str, Any]) -> None:
        session_id = frame.get("session_id")
        if not isinstance(session_id, str) or not session_id.strip() or len(session_id) > 128:
            await self.error("会话ID不能为空", 400)
            return
        message_id = frame.get("message_id")
        if kind == "read" and (isinstance(message_id, bool) or not isinstance(message_id, int)):
            await self.error("请求参数格式错误", 422)
            return
        try:
            if kind == "subscribe":
                await self.services.sessions.get(session_id, owner_id=self.actor.scope)
                await self.follow(session_id)
            else:
                await self.services.agents.customer_signal(
                    session_id, self.actor.scope, kind, message_id if kind == "read" else None
                )
        except AppError as exc:
            await self.error(exc.message, exc.status_code)

    async def follow(self, session_id: str) -> None:
        """Send the session's live events on this socket (one session at a time: the latest), from
        now on: the starting point is fixed before this returns, so nothing after it is missed."""
        if self.followed == session_id and self.follow_task is not None and not self.follow_task.done():
            return
        if self.follow_task is not None:
            self.follow_task.cancel()
        self.followed = session_id
        after = await self.services.live.last_id()
        self.follow_task = asyncio.create_task(self._follow(session_id, after))

    async def _follow(self, session_id: str, after: int) -> None:
        try:
            async for event in self.services.live.stream([session_channel(session_id)], after):
                if event is not None:
                    await self.send({**event.data, "type": event.type, "id": event.id})
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("websocket live events failed (session %s)", session_id)

    async def _stream(self, events: Any) -> None:
        event: ChatEvent
        try:
            async for event in events:
                await self.send(event_payload(event))
        except Exception:
            logger.exception("websocket turn failed")
            with contextlib.suppress(Exception):
                await self.send(event_payload(ErrorEvent(message="处理聊天请求时发生错误，请稍后重试")))

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat)
            if loop.time() - self.last_seen > 2 * self.heartbeat:
                await self.close(1001, "heartbeat lost")
                return
            with contextlib.suppress(Exception):
                await self.send({"type": "ping"})

    async def _expiry(self, expires_at: float) -> None:
        """Close the socket (1008) the moment its token expires, a turn in progress included."""
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        while not self.actor.expired():  # the event loop's clock may run ahead of the wall clock
            await asyncio.sleep(0.05)
        await self.close(WS_POLICY_VIOLATION, TOKEN_EXPIRED)


@router.websocket("/ws")
async def chat_websocket(websocket: WebSocket) -> None:
    """WebSocket 聊天通道：发送 JSON 消息，接收带类型的事件帧。"""
    services: Services = websocket.app.state.services
    await _Connection(websocket, services).run()
