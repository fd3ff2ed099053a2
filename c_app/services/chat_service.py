"""One chat turn, end to end (architecture doc, section 3).

`prepare` does everything that can be refused with an HTTP error: the message is checked, the
session fetched or created, and the customer's message stored and committed. Only then does the
stream start: `Turn.events()` retrieves, runs the engine, and stores the answer when it ends
(or what there was of it, when the client leaves or the engine fails).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio

from ..config import Settings
from ..db import messages as messages_repo
from ..db import sessions as sessions_repo
from ..db.engine import Database
from ..db.memories import RetrievedMemory
from ..db.models import utcnow
from ..engines.base import Engine, TurnContext
from ..engines.kb_responder import close_questions
from ..errors import BadRequest, NotFound
from ..schemas.customer import ChatMessage
from ..schemas.events import (
    ChatEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    HandoffEvent,
    MetaEvent,
    SourcesEvent,
    SuggestionsEvent,
)
from .memory_service import MemoryService
from .session_service import SessionService
from .upload_service import UploadService

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRIEVE_LIMIT = 5
SUGGESTION_FLOOR = 0.3
UPLOAD_PREFIX = "/static/uploads/"


def _upload_name(url: str) -> str:
    # The upload answer's file_url may carry a signature (?exp=&sig=); the owner check is by name.
    return url[len(UPLOAD_PREFIX) :].split("?", 1)[0]


_DATA_URL = re.compile(r"^data:image/(?:png|jpeg|gif|webp|bmp);base64,[A-Za-z0-9+/=]+$")
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
    if not text.strip() and not image_urls(parts):
        raise BadRequest("消息内容不能为空")
    if len(text) > settings.max_message_chars:
        raise BadRequest(f"消息内容过长，最多 {settings.max_message_chars} 个字符")
    return text, parts


def image_urls(parts: list[dict[str, Any]] | None) -> list[str]:
    return [p["image_url"]["url"] for p in parts or [] if p["type"] == "image_url"]


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
        engine_name = engine.name
        started = time.monotonic()
        answer: list[str] = []
        sources: list[dict[str, Any]] = []
        usage: dict[str, Any] | None = None
        status = "interrupted"
        finished_as = "complete"
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
                images=await service.images_for_model(self),
                search=lambda query: service.memory.search(self.user_id, query, limit=RETRIEVE_LIMIT),
                remember=self._remember,
            )
            stop = service.register(self.session_id)
            try:
                async for event in until_stopped(engine.stream(context), stop):
                    if isinstance(event, MetaEvent):
                        engine_name = event.engine or engine_name
                        finished_as = event.status or finished_as
                        usage = event.usage or usage
                        continue
                    if isinstance(event, DeltaEvent):
                        if not event.text:
                            continue
                        answer.append(event.text)
                    elif isinstance(event, SourcesEvent):
                        sources = event.sources
                    elif isinstance(event, HandoffEvent):
                        handoff = True
                    yield event
            finally:
                service.unregister(self.session_id, stop)
            status = "interrupted" if stop.is_set() else finished_as
            if status != "interrupted":
                questions = suggestions(memories, used=sources, asked=self.text)
                if questions:
                    yield SuggestionsEvent(questions=questions)
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
                    engine=engine_name,
                    sources=sources,
                    usage=usage,
                    handoff=handoff,
                    latency_ms=int((time.monotonic() - started) * 1000),
                )
        yield DoneEvent(message_id=message_id, engine=engine_name, status=status, usage=usage)

    async def _remember(self, fact: str) -> int | None:
        row = await self.service.memory.add_private(self.user_id, fact, {"source": "assistant"})
        return row.id


class ChatService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        sessions: SessionService,
        memory: MemoryService,
        uploads: UploadService,
        engine: Engine,
        *,
        sends_images: bool = False,
    ) -> None:
        self.db = db
        self.settings = settings
        self.sessions = sessions
        self.memory = memory
        self.uploads = uploads
        self.engine = engine
        self.sends_images = sends_images
        # Turns being answered in this process, by session, so a stop request can end them.
        self._running: dict[str, set[asyncio.Event]] = {}

    def register(self, session_id: str) -> asyncio.Event:
        stop = asyncio.Event()
        self._running.setdefault(session_id, set()).add(stop)
        return stop

    def unregister(self, session_id: str, stop: asyncio.Event) -> None:
        running = self._running.get(session_id)
        if running is not None:
            running.discard(stop)
            if not running:
                del self._running[session_id]

    async def stop(self, session_id: str, *, owner_id: str | None) -> bool:
        """Stop the answers being generated in a session (in this process). True if one was running."""
        await self.sessions.get(session_id, owner_id=owner_id)
        return self.interrupt(session_id)

    def interrupt(self, session_id: str) -> bool:
        running = self._running.get(session_id, set())
        for event in running:
            event.set()
        return bool(running)

    async def _check_image(self, url: str, user_id: str) -> None:
        """An image part may name this user's own upload, carry a data URL, or come from an allowed host."""
        if url.startswith(UPLOAD_PREFIX):
            try:
                await self.uploads.get(_upload_name(url), owner_id=user_id)
            except NotFound:
                raise BadRequest("图片不存在或无权访问") from None
            return
        if _DATA_URL.match(url):
            return
        parsed = urlsplit(url)
        if parsed.scheme in ("http", "https") and parsed.hostname in self.settings.image_url_hosts:
            return
        raise BadRequest("不支持的图片地址，请先上传图片")

    async def images_for_model(self, turn: Turn) -> list[str]:
        """The turn's images as the model should receive them: our uploads become data URLs."""
        if not self.sends_images:
            return []
        images: list[str] = []
        for url in image_urls(turn.parts):
            if url.startswith(UPLOAD_PREFIX):
                row, path = await self.uploads.get(_upload_name(url), owner_id=turn.user_id)
                data = await anyio.Path(path).read_bytes()
                images.append(f"data:{row.content_type};base64,{base64.b64encode(data).decode()}")
            else:
                images.append(url)
        return images

    async def prepare(self, *, user_id: str, session_id: str, message: ChatMessage) -> Turn:
        """Check the message, make sure the session is the user's, and store the question."""
        text, parts = normalise_content(message, self.settings)
        for url in image_urls(parts):
            await self._check_image(url, user_id)
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
        usage: dict[str, Any] | None,
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
                    usage=usage,
                    latency_ms=latency_ms,
                )
                await sessions_repo.record_messages(db, turn.session_id, count=1, at=utcnow())
                if handoff:
                    await sessions_repo.set_status(db, turn.session_id, "waiting_human")
            if status in ("complete", "fallback") and turn.text and text:
                await self.memory.add_exchange(
                    turn.user_id, turn.text, text, turn.session_id, grounded=bool(sources)
                )
            return row.id
        except Exception:
            logger.exception("could not store the answer (session %s)", turn.session_id)
            return None


def suggestions(memories: list[RetrievedMemory], *, used: list[dict[str, Any]], asked: str) -> list[str]:
    """Up to three follow-up questions: other knowledge-base entries close to what was asked."""
    return close_questions(
        memories, floor=SUGGESTION_FLOOR, skip_ids={item.get("id") for item in used}, skip={asked}
    )


async def until_stopped(source: AsyncIterator[T], stop: asyncio.Event) -> AsyncIterator[T]:
    """Iterate `source` until it ends or `stop` is set; a stop cancels the pending step at once,
    so an engine waiting on its model is interrupted (and closes its upstream request)."""
    iterator = aiter(source)
    stopped = asyncio.ensure_future(stop.wait())
    step: asyncio.Future[T] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(iterator))
            await asyncio.wait({step, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            step = None
            yield item
    finally:
        stopped.cancel()
        if step is not None and not step.done():
            step.cancel()
            with contextlib.suppress(BaseException):
                await step


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    return (line[:20] + "…") if len(line) > 20 else (line or "新对话")
