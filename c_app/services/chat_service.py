"""One chat turn, end to end (architecture doc, section 3).

`prepare` does everything that can be refused with an HTTP error: the message is checked, the
session fetched or created, and the customer's message stored and committed. Only then does the
stream start: `Turn.events()` retrieves, runs the engine, and stores the answer when it ends
(or what there was of it, when the client leaves or the engine fails).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio

from ..config import Settings
from ..db import messages as messages_repo
from ..db import sessions as sessions_repo
from ..db.engine import Database
from ..db.models import utcnow
from ..engines.base import Engine, TurnContext
from ..errors import BadRequest
from ..schemas.customer import ChatMessage
from ..schemas.events import ChatEvent, DeltaEvent, DoneEvent, ErrorEvent, HandoffEvent, SourcesEvent
from .memory_service import MemoryService
from .session_service import SessionService

logger = logging.getLogger(__name__)

RETRIEVE_LIMIT = 5
HISTORY_LIMIT = 20
FAILURE_MESSAGE = "处理聊天请求时发生错误，请稍后重试"
_PART_TYPES = {"text", "image_url", "image"}


def normalise_content(message: ChatMessage, settings: Settings) -> tuple[str, list[dict[str, Any]] | None]:
    """The message's text, and its parts when it is multimodal. Raises BadRequest as the seed does."""
    content = message.content
    if isinstance(content, str):
        text = content
        parts = None
    else:
        if len(content) > settings.max_message_parts:
            raise BadRequest(f"消息内容最多包含 {settings.max_message_parts} 个部分")
        texts: list[str] = []
        parts = []
        for item in content:
            if not isinstance(item, dict) or "type" not in item or item["type"] not in _PART_TYPES:
                raise BadRequest("多模态消息格式错误")
            if item["type"] == "text":
                if not isinstance(item.get("text"), str):
                    raise BadRequest("多模态消息格式错误")
                texts.append(item["text"])
                parts.append({"type": "text", "text": item["text"]})
            else:
                url = _image_url(item)
                if url is None:
                    raise BadRequest("多模态消息格式错误")
                parts.append({"type": "image_url", "image_url": {"url": url}})
        text = "\n".join(t for t in texts if t.strip())
    if not text.strip() and not parts:
        raise BadRequest("消息内容不能为空")
    if len(text) > settings.max_message_chars:
        raise BadRequest(f"消息内容过长，最多 {settings.max_message_chars} 个字符")
    return text, parts


def _image_url(item: dict[str, Any]) -> str | None:
    value = item.get("image_url", item.get("url"))
    if isinstance(value, dict):
        value = value.get("url")
    if isinstance(value, str) and 0 < len(value) <= 2048:
        return value
    return None


@dataclass
class Turn:
    """A turn whose question is stored; iterate `events()` to produce and store the answer."""

    service: ChatService
    user_id: str
    session_id: str
    text: str
    parts: list[dict[str, Any]] | None
    message_id: int

    async def events(self) -> AsyncIterator[ChatEvent]:
        service = self.service
        engine = service.engine
        started = time.monotonic()
        answer: list[str] = []
        sources: list[dict[str, Any]] = []
        status = "interrupted"
        handoff = False
        try:
            memories = await service.memory.search(self.user_id, self.text, limit=RETRIEVE_LIMIT) if self.text else []
            async with service.db.read() as db:
                history = await messages_repo.list_recent(
                    db, self.session_id, owner_id=self.user_id, limit=HISTORY_LIMIT + 1
                )
            context = TurnContext(
                user_id=self.user_id,
                session_id=self.session_id,
                text=self.text,
                parts=self.parts,
                memories=memories,
                history=[m for m in history if m.id != self.message_id],
            )
            async for event in engine.stream(context):
                if isinstance(event, DeltaEvent):
                    if not event.text:
                        continue
                    answer.append(event.text)
                elif isinstance(event, SourcesEvent):
                    sources = event.sources
                elif isinstance(event, HandoffEvent):
                    handoff = True
                yield event
            status = "complete"
        except Exception:
            logger.exception("chat turn failed (session %s)", self.session_id)
            status = "partial" if answer else "failed"
            yield ErrorEvent(message=FAILURE_MESSAGE)
        finally:
            # Runs on success, on failure, and when the client goes away (cancellation): shield the
            # write so a cancelled request still records what was said.
            with anyio.CancelScope(shield=True):
                message_id = await service.finish(
                    self,
                    text="".join(answer),
                    status=status,
                    engine=engine.name,
                    sources=sources,
                    handoff=handoff,
                    latency_ms=int((time.monotonic() - started) * 1000),
                )
        yield DoneEvent(message_id=message_id, engine=engine.name, status=status)


class ChatService:
    def __init__(
        self, db: Database, settings: Settings, sessions: SessionService, memory: MemoryService, engine: Engine
    ) -> None:
        self.db = db
        self.settings = settings
        self.sessions = sessions
        self.memory = memory
        self.engine = engine

    async def prepare(self, *, user_id: str, session_id: str, message: ChatMessage) -> Turn:
        """Check the message, make sure the session is the user's, and store the question."""
        text, parts = normalise_content(message, self.settings)
        await self.sessions.get_or_create(session_id, user_id, title=_title_from(text))
        now = utcnow()
        async with self.db.transaction() as db:
            row = await messages_repo.add(
                db, session_id=session_id, user_id=user_id, role="user", content=text, parts=parts
            )
            await sessions_repo.record_messages(db, session_id, count=1, at=now)
        return Turn(self, user_id, session_id, text, parts, row.id)

    async def finish(
        self,
        turn: Turn,
        *,
        text: str,
        status: str,
        engine: str,
        sources: list[dict[str, Any]],
        handoff: bool,
        latency_ms: int,
    ) -> int | None:
        """Store the answer (or what there was of it) and move the session; never raises."""
        if not text and status != "complete":
            return None
        try:
            async with self.db.transaction() as db:
                row = await messages_repo.add(
                    db,
                    session_id=turn.session_id,
                    user_id=turn.user_id,
                    role="assistant",
                    content=text,
                    status=status,
                    engine=engine,
                    sources=sources or None,
                    latency_ms=latency_ms,
                )
                await sessions_repo.record_messages(db, turn.session_id, count=1, at=utcnow())
                if handoff:
                    await sessions_repo.set_status(db, turn.session_id, "waiting_human")
            if status == "complete" and turn.text and text:
                await self.memory.add_exchange(
                    turn.user_id, turn.text, text, turn.session_id, grounded=bool(sources)
                )
            return row.id
        except Exception:
            logger.exception("could not store the answer (session %s)", turn.session_id)
            return None


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    return (line[:20] + "…") if len(line) > 20 else (line or "新对话")
