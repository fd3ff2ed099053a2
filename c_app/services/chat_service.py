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
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio

from ..config import Settings
from ..engines.base import (
    ANSWER,
    CLARIFY,
    PUBLIC,
    Decision,
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
from ..errors import BadRequest, NotFound, ServiceUnavailable
from ..observability import metrics, tracing
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
from .answer_decision import AnswerDecision, choice_text, picked_choice
from .memory_service import ChatExchange, MemoryService
from .session_service import SessionGone, SessionService
from .upload_service import UploadService

if TYPE_CHECKING:  # built by the container, used here through its methods only
    from ..db.models import Message
    from ..privacy.sensitive import SensitiveWords, WordList
    from .agent_service import AgentService
    from .stops import StopSignals

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
BLOCKED = "blocked"  # status of a customer's message refused for a sensitive word, and of the fixed reply
FAILURE_MESSAGE = "处理聊天请求时发生错误，请稍后重试"
DRAINING_MESSAGE = "服务正在重启，请稍后重试"
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
    # Set when the message was blocked (sensitive word): `answer` streams this fixed reply instead.
    reply: str | None = None
    # The session's status when the message arrived (issue 10: waiting_human, with_agent, ticket:
    # the bot does not answer).
    status: str = "active"
    door: str = "stream"  # which door it came in by (stream, websocket, openai): a metrics label


@dataclass(slots=True)
class _Answer:
    """What a turn's answer has become so far (stored when the turn ends, however it ends)."""

    engine: str
    text: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    status: str = "interrupted"
    handoff: bool = False
    outcome: str | None = None  # engines.base.OUTCOMES, or "blocked"
    score: float | None = None  # the turn's best knowledge-base score
    choices: list[int] | None = None  # the entries a clarified answer offered

    @property
    def final_outcome(self) -> str | None:
        return "handoff" if self.handoff else self.outcome


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
        sensitive: SensitiveWords | None = None,
        decider: AnswerDecision | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.memory = memory
        self.uploads = uploads
        self.engine = engine
        self.sends_images = sends_images
        self.sensitive = sensitive  # None: no sensitive-word list configured, no checks
        self.decider = decider  # None: the engine decides from the scores (ANSWER_THRESHOLD set)
        # Turns being answered in this process, by session, so a stop request can end them.
        self._running: dict[str, set[asyncio.Event]] = {}
        # Human agents (issue 10) and stops across replicas; set by the container.
        self.agents: AgentService | None = None
        self.stops: StopSignals | None = None
        # Graceful drain (SIGTERM, api/lifecycle.py): no new turn once draining; every running one
        # (and any still to register) told to stop once the grace is over.
        self.draining = False
        self._stopping = False

    # -- before the stream: everything that can be refused --------------------------------------

    async def prepare(self, *, user_id: str, session_id: str, message: ChatMessage) -> Turn:
        """Check the message, make sure the session is the user's, and store the question."""
        if self.draining:
            raise ServiceUnavailable(DRAINING_MESSAGE, headers={"Retry-After": "1"})
        if not session_id.strip():
            raise BadRequest("会话ID不能为空")
        text, parts = normalise_content(message, self.settings)
        for url in image_urls(parts):
            await self._check_image(url, user_id)
        listed = await self.sensitive.refresh() if self.sensitive is not None else None
        scan = listed.scan(text) if listed is not None and text else None
        if scan is not None and scan.hits:
            # Blocked: stored as written (the operator's record of what was refused), kept out of the
            # model's history and of memory by its status; the session title is masked.
            row, _ = await self.sessions.add_question(
                session_id, user_id, content=text, parts=parts, title=_title_from(scan.text), status=BLOCKED
            )
            await self._moderated(session_id, user_id, row.id, "question", scan.hits, scan.words)
            return Turn(user_id, session_id, text, parts, row.id, reply=self.settings.sensitive_reply)
        row, status = await self.sessions.add_question(
            session_id, user_id, content=text, parts=parts, title=_title_from(text)
        )
        return Turn(user_id, session_id, text, parts, row.id, status=status)

    async def _moderated(
        self,
        session_id: str,
        user_id: str,
        message_id: int | None,
        direction: str,
        hits: int,
        words: list[str],
    ) -> None:
        """Record a sensitive-word event (the listed words, never the text); never raises."""
        try:
            await self.sessions.record_moderation(
                session_id, user_id, message_id=message_id, direction=direction, hits=hits, words=words
            )
        except Exception:
            logger.exception("could not record a sensitive-word event (session %s)", session_id)

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

    @tracing.traced_stream("chat.turn")
    async def answer(self, turn: Turn) -> AsyncIterator[ChatEvent]:
        """Produce the answer as events, store it when the turn ends, and end with `done`."""
        if turn.reply is not None:
            async for reply_event in self._fixed_reply(turn, turn.reply):
                yield reply_event
            return
        if self.agents is not None and turn.status != "active":
            held = await self.agents.answer_held(turn, turn.status)
            if held is not None:  # a person has the session (or takes a message): no bot answer
                async for held_event in held:
                    yield held_event
                return
        started = time.monotonic()
        clock = metrics.TurnClock(turn.door)
        result = _Answer(engine=self.engine.name)
        finished_as = "complete"
        failed = False  # an error event already sent
        # The answer is checked as it streams: held back at most by the longest listed word (less one).
        listed = self.sensitive.current if self.sensitive is not None else None
        censor = listed.censor() if listed is not None else None
        try:
            # The session's last messages, read once: the history the model sees, and the answer
            # just before (whose choices this message may pick).
            recent = await self.sessions.recent_messages(
                turn.session_id, owner_id=turn.user_id, limit=HISTORY_LIMIT + 1
            )
            hits = await self._search(turn.user_id, turn.text) if turn.text else []
            hits, decision = await self._decide(turn, hits, recent)
            result.score = max((h.score for h in hits if h.scope == PUBLIC), default=None)
            context = TurnContext(
                user_id=turn.user_id,
                session_id=turn.session_id,
                text=turn.text,
                hits=hits,
                history=_history(turn, recent),
                images=await self._images_for_model(turn),
                search=lambda query: self._search(turn.user_id, query),
                remember=lambda fact: self._remember(turn, fact),
                decision=decision,
            )
            stop = self._register(turn.session_id)
            watch = self.stops.watch(turn.session_id, stop) if self.stops is not None else None
            promise: str | None = None  # what the bot says after a hand-off (issue 10)
            swallow = ""  # the engine's "transferring you" text, dropped when nobody is there
            try:
                async for event in until_stopped(
                    tracing.stream("chat.model", self.engine.stream(context)), stop
                ):
                    if isinstance(event, Meta):
                        result.engine = event.engine or result.engine
                        finished_as = event.status or finished_as
                        result.usage = event.usage or result.usage
                        result.outcome = event.outcome or result.outcome
                    elif isinstance(event, Delta):
                        if swallow and swallow.startswith(event.text):
                            swallow = swallow[len(event.text) :]
                            continue
                        swallow = ""
                        text = censor.feed(event.text) if censor is not None else event.text
                        if text:
                            result.text.append(text)
                            clock.text()
                            yield DeltaEvent(text=text)
                    elif isinstance(event, Sources):
                        result.sources = [
                            _masked(MemoryItem.from_hit(hit).wire(), listed) for hit in event.hits
                        ]
                        yield SourcesEvent(sources=result.sources)
                    elif isinstance(event, Handoff):
                        if result.handoff:
                            continue
                        result.handoff = True
                        if self.agents is None:
                            yield HandoffEvent(message=event.message)
                            continue
                        promised = await self.agents.hand_off(
                            session_id=turn.session_id,
                            user_id=turn.user_id,
                            reason="model" if result.engine != "knowledge_base" else "customer",
                            last_question=turn.text,
                            sources=result.sources or None,
                        )
                        if promised.queued:
                            promise = promised.text
                            yield HandoffEvent(message=event.message)
                        else:  # nobody is there: no "transferring you", but when people are back
                            swallow = event.message + "\n"
                            result.text.append(promised.text)
                            yield HandoffEvent(message=promised.text)
                            yield DeltaEvent(text=promised.text)
            finally:
                self._unregister(turn.session_id, stop)
                if watch is not None:
                    watch.cancel()
            if promise is not None:
                result.text.append("\n" + promise)
                yield DeltaEvent(text="\n" + promise)
            if censor is not None and (tail := censor.flush()):
                result.text.append(tail)
                yield DeltaEvent(text=tail)
            result.status = "interrupted" if stop.is_set() else finished_as
            if result.status != "interrupted":
                if decision is not None and decision.outcome == CLARIFY and result.outcome == "clarified":
                    # The choices, in the order the answer numbered them: a click or "2" picks one.
                    result.choices = [hit.id for hit in decision.entries]
                    questions = [choice_text(hit) for hit in decision.entries]
                elif decision is not None and decision.outcome not in (ANSWER, CLARIFY):
                    questions = []  # nothing in the knowledge base is close: nothing to offer
                else:
                    questions = suggestions(hits, used=result.sources, asked=turn.text)
                if listed is not None:  # a suggested question with a listed word would be blocked
                    questions = [q for q in questions if not listed.scan(q).hits]
                if questions:
                    yield SuggestionsEvent(questions=questions)
        except Exception:
            logger.exception("chat turn failed (session %s)", turn.session_id)
            if censor is not None and (tail := censor.flush()):
                result.text.append(tail)
                yield DeltaEvent(text=tail)
            result.status = "partial" if result.text else "failed"
            failed = True
            yield ErrorEvent(message=FAILURE_MESSAGE)
        finally:
            # Runs on success, on failure, and when the client goes away (cancellation): shield the
            # write so a cancelled request still records what was said.
            with anyio.CancelScope(shield=True), tracing.span("chat.storage"):
                stored, message_id = await self._stored(
                    turn, result, latency_ms=int((time.monotonic() - started) * 1000)
                )
                clock.finished(result.final_outcome, result.status)
                if stored and censor is not None and censor.hits:
                    await self._moderated(
                        turn.session_id, turn.user_id, message_id, "answer", censor.hits, censor.matched_words
                    )
        # `done` only for an answer that is stored: a client that reads it may take it as kept.
        if stored:
            yield DoneEvent(
                message_id=message_id, engine=result.engine, status=result.status, usage=result.usage
            )
        elif not failed:
            yield ErrorEvent(message=FAILURE_MESSAGE)

    async def _fixed_reply(self, turn: Turn, reply: str) -> AsyncIterator[ChatEvent]:
        """A blocked message's answer: the fixed reply, stored as the assistant's message; no
        retrieval, no engine."""
        result = _Answer(engine="moderation", text=[reply], status=BLOCKED, outcome=BLOCKED)
        clock = metrics.TurnClock(turn.door)
        # Stored first: the record holds even if the client leaves.
        with anyio.CancelScope(shield=True), tracing.span("chat.storage"):
            stored, message_id = await self._stored(turn, result, latency_ms=0)
            clock.finished(result.final_outcome, result.status)
        yield DeltaEvent(text=reply)
        if stored:
            yield DoneEvent(message_id=message_id, engine=result.engine, status=result.status)
        else:
            yield ErrorEvent(message=FAILURE_MESSAGE)

    async def _decide(
        self, turn: Turn, hits: list[Hit], recent: list[Message]
    ) -> tuple[list[Hit], Decision | None]:
        """The knowledge-base decision on the turn's hits; a reply picking one of the previous
        answer's choices (its number, or the clicked question) answers that entry."""
        if not turn.text:
            return hits, None
        picked = await self._picked(turn, recent)
        if picked is not None:
            return [picked, *(h for h in hits if h.id != picked.id)], Decision(
                ANSWER, (picked,), 1.0, picked=True
            )
        return hits, self.decider.decide(turn.text, hits) if self.decider is not None else None

    async def _picked(self, turn: Turn, recent: list[Message]) -> Hit | None:
        """The entry the customer picked among the choices of the answer just before, recorded
        there (the pair: that answer's question -> this entry); None when they asked anew."""
        previous = next((r for r in reversed(recent) if r.id != turn.message_id), None)
        if previous is None or previous.role != "assistant" or not previous.choices:
            return None
        hit = picked_choice(turn.text, await self.memory.entries(previous.choices))
        if hit is not None:
            await self.sessions.record_choice(previous.id, hit.id)
        return hit

    async def _search(self, user_id: str, query: str) -> list[Hit]:
        with metrics.retrieval():
            return await self.memory.search(user_id, query, limit=RETRIEVE_LIMIT)

    async def _remember(self, turn: Turn, fact: str) -> int | None:
        """The model saves a fact about the customer, unless the customer was erased meanwhile
        (on any replica: the session is gone)."""
        try:
            await self.sessions.get(turn.session_id, owner_id=turn.user_id)
        except NotFound:
            return None
        row = await self.memory.add_private(turn.user_id, fact, {"source": "assistant"})
        return row.id

    async def _images_for_model(self, turn: Turn) -> list[str]:
        """The turn's images as the model should receive them: our uploads become data URLs."""
        if not self.sends_images:
            return []
        images: list[str] = []
        for url in image_urls(turn.parts):
            if url.startswith(UPLOAD_PREFIX):
                row = await self.uploads.get(_upload_name(url), owner_id=turn.user_id)
                data = await self.uploads.read(row)
                images.append(f"data:{row.content_type};base64,{base64.b64encode(data).decode()}")
            else:
                images.append(url)
        return images

    async def _stored(self, turn: Turn, result: _Answer, *, latency_ms: int) -> tuple[bool, int | None]:
        """`_store`, never raising: (False, None) when the answer could not be stored."""
        try:
            return True, await self._store(turn, result, latency_ms=latency_ms)
        except Exception:
            logger.exception("could not store the answer (session %s)", turn.session_id)
            return False, None

    async def _store(self, turn: Turn, result: _Answer, *, latency_ms: int) -> int | None:
        """Store the answer (or what there was of it) with the chat memory of the exchange, in one
        transaction. Returns the answer's id, None when there is nothing to store or its session
        is gone (deleted, or the customer erased while it streamed: nothing of it is kept); raises
        when it could not be stored (the client then gets an error, never `done`)."""
        text = "".join(result.text)
        if not text and result.status != "complete":
            return None
        exchange = None
        if result.status in ("complete", "fallback") and turn.text and text:
            try:
                exchange = await self.memory.exchange(
                    turn.user_id, turn.text, text, turn.session_id, grounded=bool(result.sources)
                )
            except Exception:
                logger.exception("could not remember the exchange (session %s)", turn.session_id)

        async def store(along: ChatExchange | None) -> int:
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
                handoff=result.handoff and self.agents is None,  # else the agent service set it
                outcome=result.final_outcome,
                entry_id=next((s["id"] for s in result.sources if s.get("type") == "public"), None),
                score=result.score,
                choices=result.choices,
                along=along,
            )
            return row.id

        try:
            try:
                return await store(exchange)
            except SessionGone:
                raise
            except Exception:
                if exchange is None:
                    raise
                # Once more without the exchange: the answer matters more than its chat memory
                # (and a write lock held past the busy timeout may have gone meanwhile).
                logger.exception("could not store the answer with its exchange (session %s)", turn.session_id)
                return await store(None)
        except SessionGone:
            logger.info("answer not stored: its session is gone (session %s)", turn.session_id)
            return None

    # -- stopping -------------------------------------------------------------------------------

    def _register(self, session_id: str) -> asyncio.Event:
        stop = asyncio.Event()
        if self._stopping:
            stop.set()
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
        stopped = self.interrupt(session_id)
        if self.stops is not None:  # the turn may run on another replica: the flag and the bus reach it
            stopped = await self.stops.request(session_id, stopped_here=stopped) or stopped
        return stopped

    async def drain(self, grace: float) -> None:
        """Refuse new turns at once (503), let running ones finish for up to `grace` seconds, then
        stop the rest: each stores what it has as interrupted and ends its stream with `done`.
        The server exits once the last stream has ended, cancelling this wait if it is still on."""
        self.draining = True
        await asyncio.sleep(grace)
        self._stopping = True
        for stops in list(self._running.values()):
            for event in stops:
                event.set()

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
    so an engine waiting on its model is interrupted (and closes its upstream request).

    The steps run in the caller's task (a task per step cost ~40 us an event, more than the
    event's framing): a stop cancels that task only while it waits inside a step, and takes
    back its own cancellation; a stop while the caller handles an event ends at the next step."""
    task = asyncio.current_task()
    assert task is not None
    iterator = aiter(source)
    stepping = interrupted = False

    def interrupt(_: object) -> None:
        nonlocal interrupted
        if stepping and not interrupted:
            interrupted = True
            task.cancel()

    watcher = asyncio.ensure_future(stop.wait())
    watcher.add_done_callback(interrupt)
    try:
        while not stop.is_set():
            stepping = True
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if interrupted and task.uncancel() == 0:  # the stop's, and nobody else's
                    return
                raise
            finally:
                stepping = False
            if interrupted:  # the step swallowed the stop's cancellation
                task.uncancel()
                break
            yield item
        # Stopped between steps: the source closes now (an engine, its upstream request).
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
    finally:
        watcher.remove_done_callback(interrupt)
        watcher.cancel()


def _history(turn: Turn, recent: list[Message]) -> list[HistoryItem]:
    """What the model sees of the session before this message: a blocked message and its fixed
    reply never reach it."""
    return [
        HistoryItem(row.role, row.content)
        for row in recent
        if row.id != turn.message_id and row.status != BLOCKED
    ]


def _masked(item: dict[str, Any], listed: WordList | None) -> dict[str, Any]:
    """A source as the client sees it: its texts with listed words masked (not counted as hits:
    the answer quoting them is)."""
    if listed is None:
        return item
    for key in ("content", "title", "question"):
        if isinstance(item.get(key), str):
            item[key] = listed.scan(item[key]).text
    return item


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    return (line[:20] + "…") if len(line) > 20 else (line or "新对话")
