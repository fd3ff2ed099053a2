"""One chat turn, end to end (architecture doc, section 3).

`prepare` does everything that can be refused with an HTTP error: the message is checked, the
session fetched or created, and the customer's message stored and committed; it returns the
`Turn`, plain state. Only then does the stream start: `answer(turn)` retrieves, runs the engine
on plain inputs, turns its events into the client's, and stores the answer when it ends (or what
there was of it, when the client leaves or the engine fails).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio

from ..config import Settings
from ..engines.base import (
    Delta,
    Engine,
    Handoff,
    HistoryItem,
    Hit,
    Meta,
    Sources,
    TurnContext,
    close_questions,
)
from ..errors import BadRequest, NotFound
from ..schemas.customer import ChatMessage, MemoryItem
from ..schemas.events import (
    ChatEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    HandoffEvent,
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


@dataclass(frozen=True, slots=True)
class Turn:
    """A customer's message, checked and stored: what `ChatService.answer` needs to answer it."""

    user_id: str
    session_id: str
    text: str
    parts: list[dict[str, Any]] | None
    message_id: int


@dataclass(slots=True)
class _Answer:
    """What a turn's answer has become so far (stored when the turn ends, however it ends)."""

    engine: str
    text: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    status: str = "interrupted"
    handoff: bool = False


class ChatService:
    def __init__(
        self,
        settings: Settings,
        sessions: SessionService,
        memory: MemoryService,
        uploads: UploadService,
        engine: Engine,
        *,
        sends_images: bool = False,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.memory = memory
        self.uploads = uploads
        self.engine = engine
        self.sends_images = sends_images
        # Turns being answered in this process, by session, so a stop request can end them.
        self._running: dict[str, set[asyncio.Event]] = {}

    # -- before the stream: everything that can be refused --------------------------------------

    async def prepare(self, *, user_id: str, session_id: str, message: ChatMessage) -> Turn:
        """Check the message, make sure the session is the user's, and store the question."""
        if not session_id.strip():
            raise BadRequest("会话ID不能为空")
        text, parts = normalise_content(message, self.settings)
        for url in image_urls(parts):
            await self._check_image(url, user_id)
        await self.sessions.get_or_create(session_id, user_id, title=_title_from(text))
        row = await self.sessions.add_message(session_id, user_id, role="user", content=text, parts=parts)
        return Turn(user_id, session_id, text, parts, row.id)

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

    # -- the stream -----------------------------------------------------------------------------

    async def answer(self, turn: Turn) -> AsyncIterator[ChatEvent]:
        """Produce the answer as events, store it when the turn ends, and end with `done`."""
        started = time.monotonic()
        result = _Answer(engine=self.engine.name)
        finished_as = "complete"
        try:
            hits = await self._search(turn.user_id, turn.text) if turn.text else []
            context = TurnContext(
                user_id=turn.user_id,
                session_id=turn.session_id,
                text=turn.text,
                hits=hits,
                history=await self._history(turn),
                images=await self._images_for_model(turn),
                search=lambda query: self._search(turn.user_id, query),
                remember=lambda fact: self._remember(turn.user_id, fact),
            )
            stop = self._register(turn.session_id)
            try:
                async for event in until_stopped(self.engine.stream(context), stop):
                    if isinstance(event, Meta):
                        result.engine = event.engine or result.engine
                        finished_as = event.status or finished_as
                        result.usage = event.usage or result.usage
                    elif isinstance(event, Delta):
                        if event.text:
                            result.text.append(event.text)
                            yield DeltaEvent(text=event.text)
                    elif isinstance(event, Sources):
                        result.sources = [MemoryItem.from_hit(hit).wire() for hit in event.hits]
                        yield SourcesEvent(sources=result.sources)
                    elif isinstance(event, Handoff):
                        result.handoff = True
                        yield HandoffEvent(message=event.message)
            finally:
                self._unregister(turn.session_id, stop)
            result.status = "interrupted" if stop.is_set() else finished_as
            if result.status != "interrupted":
                questions = suggestions(hits, used=result.sources, asked=turn.text)
                if questions:
                    yield SuggestionsEvent(questions=questions)
        except Exception:
            logger.exception("chat turn failed (session %s)", turn.session_id)
            result.status = "partial" if result.text else "failed"
            yield ErrorEvent(message=FAILURE_MESSAGE)
        finally:
            # Runs on success, on failure, and when the client goes away (cancellation): shield the
            # write so a cancelled request still records what was said.
            with anyio.CancelScope(shield=True):
                message_id = await self._store(turn, result, latency_ms=int((time.monotonic() - started) * 1000))
        yield DoneEvent(message_id=message_id, engine=result.engine, status=result.status, usage=result.usage)

    async def _search(self, user_id: str, query: str) -> list[Hit]:
        return await self.memory.search(user_id, query, limit=RETRIEVE_LIMIT)

    async def _remember(self, user_id: str, fact: str) -> int | None:
        row = await self.memory.add_private(user_id, fact, {"source": "assistant"})
        return row.id

    async def _history(self, turn: Turn) -> list[HistoryItem]:
        rows = await self.sessions.recent_messages(turn.session_id, owner_id=turn.user_id, limit=HISTORY_LIMIT + 1)
        return [HistoryItem(row.role, row.content) for row in rows if row.id != turn.message_id]

    async def _images_for_model(self, turn: Turn) -> list[str]:
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

    async def _store(self, turn: Turn, result: _Answer, *, latency_ms: int) -> int | None:
        """Store the answer (or what there was of it) and remember the exchange; never raises."""
        text = "".join(result.text)
        if not text and result.status != "complete":
            return None
        try:
            row = await self.sessions.add_message(
                turn.session_id,
                turn.user_id,
                role="assistant",
                content=text,
                status=result.status,
                engine=result.engine,
                sources=result.sources or None,
                usage=result.usage,
                latency_ms=latency_ms,
                handoff=result.handoff,
            )
        except Exception:
            logger.exception("could not store the answer (session %s)", turn.session_id)
            return None
        if result.status in ("complete", "fallback") and turn.text and text:
            try:
                await self.memory.add_exchange(
                    turn.user_id, turn.text, text, turn.session_id, grounded=bool(result.sources)
                )
            except Exception:
                # The answer is stored: its id still reaches the client.
                logger.exception("could not remember the exchange (session %s)", turn.session_id)
        return row.id

    # -- stopping -------------------------------------------------------------------------------

    def _register(self, session_id: str) -> asyncio.Event:
        stop = asyncio.Event()
        self._running.setdefault(session_id, set()).add(stop)
        return stop

    def _unregister(self, session_id: str, stop: asyncio.Event) -> None:
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


def suggestions(hits: list[Hit], *, used: list[dict[str, Any]], asked: str) -> list[str]:
    """Up to three follow-up questions: other knowledge-base entries close to what was asked."""
    used_ids = {item["id"] for item in used if isinstance(item.get("id"), int)}
    return close_questions(hits, floor=SUGGESTION_FLOOR, skip_ids=used_ids, skip={asked})


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
