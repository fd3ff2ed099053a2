"""Human agents (issue 10): presence, the queue, the live conversation, transfer, close and ratings.

The rules of the agent side live here; the tables are db/agents.py's, the live delivery is
LiveEvents' (stored events on the bus), the routes only speak HTTP (api/v1/agent.py).

A session's status says who answers the customer:
    active         the bot
    waiting_human  in the queue (the bot only acknowledges, with the customer's position)
    with_agent     held by an agent (the bot only acknowledges; the agent answers)
    ticket         nobody is there: the next message is a ticket (TicketService), then active again
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.exc import IntegrityError

from ..config import Settings
from ..db import agents as repo
from ..db import memories as memories_repo
from ..db.engine import Database
from ..db.memories import PRIVATE
from ..db.models import Agent, Handoff, HandoffNote, Message, utcnow
from ..errors import BadRequest, Conflict, Forbidden, NotFound
from ..schemas.events import ChatEvent, DeltaEvent, DoneEvent
from ..schemas.history import MessageItem
from . import availability
from .audit_service import AuditContext, AuditService
from .live import QUEUE_CHANNEL, LiveEvents, agent_channel, session_channel
from .session_service import SessionService

if TYPE_CHECKING:
    from .chat_service import Turn

logger = logging.getLogger(__name__)

STATUSES = ("online", "away", "offline")
ACTIVE, WAITING, WITH_AGENT, TICKET = "active", "waiting_human", "with_agent", "ticket"
HELD_STATUSES = (WAITING, WITH_AGENT, TICKET)
CONVERSATION_LIMIT = 50
MEMORY_LIMIT = 20
DISLIKES_FOR_HANDOFF = 2
RECENT_WINDOW = timedelta(days=7)  # hand-offs the estimated wait and the percentiles are taken from
DEFAULT_HANDLING_SECONDS = 300.0  # the estimate before any hand-off was handled
RATING_COMMENT_MAX = 1000

HELD_ACK = "已转交人工客服，客服会尽快回复您"
TICKET_ACK = "您的留言已收到，我们会尽快与您联系。"

NOT_HOLDING = "您未接入该会话"
ALREADY_CLOSED = "该会话已结束"
CLAIMED_BY_OTHER = "该会话已被其他客服接入"
NOT_QUEUED = "排队中没有该会话"
UNKNOWN_AGENT = "客服不存在"
AGENT_UNAVAILABLE = "目标客服不在线或已满"
AGENT_FULL = "您接入的会话已达上限"
SELF_TRANSFER = "不能转接给自己"
SESSION_MISSING = "会话不存在"


class TicketRecorder(Protocol):
    async def record(self, user_id: str, session_id: str, text: str) -> Any: ...

    async def count_open(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Acting:
    """An agent acting (from the API's AgentActor), with where from, for the audit log."""

    agent_id: str
    name: str
    role: str
    address: str = ""
    request_id: str = ""

    @property
    def audit(self) -> AuditContext:
        return AuditContext(
            actor=self.agent_id, role=self.role, address=self.address, request_id=self.request_id
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """What the bot says when a hand-off is asked for."""

    queued: bool
    text: str
    position: int | None = None
    estimated_wait_seconds: int | None = None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def message_wire(row: Message) -> dict[str, Any]:
    item = MessageItem.from_row(row).model_dump(mode="json")
    item["agent_name"] = row.agent_name
    return item


def note_wire(row: HandoffNote) -> dict[str, Any]:
    return {
        "id": row.id,
        "session_id": row.session_id,
        "agent_id": row.agent_id,
        "agent_name": row.agent_name,
        "content": row.content,
        "created_at": row.created_at.isoformat(),
    }


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return round(ordered[rank - 1], 1)


class AgentService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        sessions: SessionService,
        live: LiveEvents,
        audit: AuditService,
        tickets: TicketRecorder | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.sessions = sessions
        self.live = live
        self.audit = audit
        self.tickets = tickets
        self.hours = availability.parse_hours(
            settings.agent_hours, settings.agent_timezone, _dates(settings.agent_closed_dates)
        )

    # -- presence -------------------------------------------------------------------------------

    def _seen_since(self) -> datetime:
        return utcnow() - timedelta(seconds=self.settings.agent_heartbeat_timeout)

    def effective_status(self, row: Agent) -> str:
        """online until the heartbeat timeout passes without a sign of life: then away."""
        if row.status == "online" and row.last_seen_at < self._seen_since():
            return "away"
        return row.status

    def presence_wire(self, row: Agent, active: int) -> dict[str, Any]:
        return {
            "agent_id": row.id,
            "name": row.name,
            "role": row.role,
            "status": self.effective_status(row),
            "max_concurrent": row.max_concurrent,
            "active_sessions": active,
            "last_seen_at": row.last_seen_at.isoformat(),
        }

    async def _ensure(self, db: Any, agent: Acting, **changes: Any) -> Agent:
        return await repo.upsert_agent(
            db,
            agent.agent_id,
            name=agent.name,
            role=agent.role,
            status=changes.get("status"),
            max_concurrent=changes.get("max_concurrent"),
            default_max=self.settings.agent_max_concurrent,
            at=utcnow(),
        )

    async def presence(self, agent: Acting) -> dict[str, Any]:
        """The agent's own presence (a sign of life: a heartbeat)."""
        async with self.db.transaction() as db:
            row = await self._ensure(db, agent)
            active = (await repo.active_counts(db, [agent.agent_id])).get(agent.agent_id, 0)
        return self.presence_wire(row, active)

    async def set_presence(self, agent: Acting, status: str, max_concurrent: int | None) -> dict[str, Any]:
        if status not in STATUSES:
            raise BadRequest("状态只能是 online、away 或 offline")
        if max_concurrent is not None and not 1 <= max_concurrent <= 50:
            raise BadRequest("最大接待数必须在1-50之间")
        async with self.db.transaction() as db:
            row = await self._ensure(db, agent, status=status, max_concurrent=max_concurrent)
            active = (await repo.active_counts(db, [agent.agent_id])).get(agent.agent_id, 0)
        await self.audit.record(
            agent.audit,
            "agent.presence",
            target_type="agent",
            target_id=agent.agent_id,
            detail={"status": status},
        )
        if status == "online":
            await self.assign_waiting()
        return self.presence_wire(row, active)

    async def agents(self) -> list[dict[str, Any]]:
        async with self.db.read() as db:
            rows = await repo.list_agents(db)
            counts = await repo.active_counts(db)
        return [self.presence_wire(row, counts.get(row.id, 0)) for row in rows]

    async def _available(self, db: Any) -> list[tuple[Agent, int]]:
        """Online agents with room, least busy first."""
        rows = await repo.online_agents(db, seen_since=self._seen_since())
        counts = await repo.active_counts(db, [row.id for row in rows])
        free = [(row, counts.get(row.id, 0)) for row in rows if counts.get(row.id, 0) < row.max_concurrent]
        return sorted(free, key=lambda pair: (pair[1], pair[0].last_seen_at))

    # -- the hand-off ---------------------------------------------------------------------------

    def is_open(self, now: datetime | None = None) -> bool:
        return availability.is_open(self.hours, now or datetime.now(UTC))

    async def hand_off(
        self,
        *,
        session_id: str,
        user_id: str,
        reason: str,
        last_question: str,
        sources: list[dict[str, Any]] | None,
    ) -> Decision:
        """Queue the session when people are there (inside hours, an agent online), else take a
        message: the bot never promises a person who does not exist."""
        async with self.db.read() as db:
            available = await self._available(db) if self.is_open() else []
            online = await repo.online_agents(db, seen_since=self._seen_since()) if self.is_open() else []
        if not online:
            async with self.db.transaction() as db:
                await repo.set_session_status(db, session_id, TICKET)
            return Decision(queued=False, text=self._closed_text())
        now = utcnow()
        try:
            async with self.db.transaction() as db:
                row = await repo.add_handoff(
                    db,
                    session_id=session_id,
                    user_id=user_id,
                    reason=reason,
                    last_question=last_question[:4000],
                    sources=sources,
                    at=now,
                )
                await repo.set_session_status(db, session_id, WAITING)
        except IntegrityError:  # already in the queue or held (a second 转人工, two doors at once)
            async with self.db.read() as db:
                existing = await repo.open_handoff(db, session_id)
            if existing is None:
                raise
            return await self._decision_for(existing)
        await self.live.emit(QUEUE_CHANNEL, "queue_added", {"item": await self.item(row)})
        if self.settings.agent_assignment == "auto" and available:
            await self.assign_waiting()
        async with self.db.read() as db:
            row = await repo.get_handoff(db, row.id) or row
        return await self._decision_for(row)

    async def _decision_for(self, row: Handoff) -> Decision:
        if row.status == repo.ASSIGNED:
            name = await self._agent_name(row.agent_id)
            return Decision(queued=True, text=f"客服{name}已接入，请稍候。", position=None)
        async with self.db.read() as db:
            position = await repo.queue_position(db, row)
        wait = await self.estimated_wait(position)
        minutes = max(1, round(wait / 60))
        text = f"您前面还有 {position - 1} 位客户，预计等待约 {minutes} 分钟。"
        await self.live.emit(
            session_channel(row.session_id),
            "queued",
            {"session_id": row.session_id, "position": position, "estimated_wait_seconds": wait},
        )
        return Decision(queued=True, text=text, position=position, estimated_wait_seconds=wait)

    def _closed_text(self) -> str:
        now = datetime.now(UTC)
        opening = availability.next_opening(self.hours, now) if not self.is_open(now) else None
        if opening is not None:
            when = availability.describe_opening(opening, now)
            head = f"现在不在人工客服服务时间，人工客服将于{when}上线。"
        else:
            head = "当前暂无人工客服在线。"
        return head + "请留下您的联系方式（手机号或邮箱）和问题，我们会尽快与您联系。"

    async def estimated_wait(self, position: int) -> int:
        """Seconds: the position times the recent average handling time, over the agents online."""
        since = utcnow() - RECENT_WINDOW
        async with self.db.read() as db:
            recent = await repo.finished_since(db, since)
            online = await repo.online_agents(db, seen_since=self._seen_since())
        handling = [
            (row.closed_at - row.assigned_at).total_seconds()
            for row in recent
            if row.closed_at is not None and row.assigned_at is not None
        ]
        average = sum(handling) / len(handling) if handling else DEFAULT_HANDLING_SECONDS
        seats = max(1, sum(row.max_concurrent for row in online))
        return math.ceil(position * average / seats)

    async def assign_waiting(self) -> None:
        """AGENT_ASSIGNMENT=auto: give queued sessions, oldest first, to the least busy online agent
        with room. A claim by another replica at the same moment simply wins (conditional UPDATE)."""
        if self.settings.agent_assignment != "auto":
            return
        async with self.db.read() as db:
            waiting = await repo.queue(db, limit=50)
        for row in waiting:
            async with self.db.read() as db:
                available = await self._available(db)
            if not available:
                return
            agent, _ = available[0]
            await self._take(row, agent.id, agent.name, action="agent.assign")

    async def _take(self, row: Handoff, agent_id: str, name: str, *, action: str) -> bool:
        now = utcnow()
        async with self.db.transaction() as db:
            if not await repo.claim(db, row.id, agent_id, now):
                return False
            await repo.set_session_status(db, row.session_id, WITH_AGENT)
        async with self.db.read() as db:
            taken = await repo.get_handoff(db, row.id) or row
        item = await self.item(taken)
        await self.live.emit(
            QUEUE_CHANNEL, "queue_removed", {"session_id": row.session_id, "handoff_id": row.id}
        )
        await self.live.emit(agent_channel(agent_id), "assigned", {"item": item})
        await self.live.emit(
            session_channel(row.session_id),
            "agent_joined",
            {"session_id": row.session_id, "agent_name": name},
        )
        await self.audit.record(
            AuditContext(actor=agent_id, role="agent" if action == "agent.claim" else "system"),
            action,
            target_type="session",
            target_id=row.session_id,
            customer_id=row.user_id,
            detail={"handoff_id": row.id, "agent_id": agent_id},
        )
        return True

    async def on_feedback(self, session_id: str, user_id: str) -> None:
        """Two 👎 in a row on the bot's answers: a hand-off (when the bot still answers)."""
        async with self.db.read() as db:
            status = await repo.session_status(db, session_id)
            if status != ACTIVE or not await repo.last_dislikes(db, session_id, count=DISLIKES_FOR_HANDOFF):
                return
            rows = await repo.conversation(db, session_id, limit=10)
            sources = await repo.last_sources(db, session_id)
        question = next((row.content for row in reversed(rows) if row.role == "user"), "")
        decision = await self.hand_off(
            session_id=session_id, user_id=user_id, reason="dislikes", last_question=question, sources=sources
        )
        logger.info("session %s handed off after two dislikes (queued: %s)", session_id, decision.queued)

    # -- the customer's side while a person has the session -------------------------------------

    async def answer_held(self, turn: Turn, status: str) -> AsyncIterator[ChatEvent] | None:
        """The answer to a customer's message in a session the bot does not answer (None: the bot
        answers after all, e.g. a session left waiting without an open hand-off)."""
        if status == TICKET:
            if self.tickets is not None:
                await self.tickets.record(turn.user_id, turn.session_id, turn.text)
            async with self.db.transaction() as db:
                await repo.set_session_status(db, turn.session_id, ACTIVE)
            return _acknowledge(TICKET_ACK, "ticket")
        async with self.db.read() as db:
            row = await repo.open_handoff(db, turn.session_id)
            message = await _message(db, turn.message_id)
        if row is None:
            async with self.db.transaction() as db:
                await repo.set_session_status(db, turn.session_id, ACTIVE)
            return None
        wire = message_wire(message) if message is not None else None
        event = {"session_id": turn.session_id, "message": wire}
        if row.status == repo.ASSIGNED and row.agent_id:
            await self.live.emit(agent_channel(row.agent_id), "customer_message", event)
            return _acknowledge(HELD_ACK, "held")
        async with self.db.transaction() as db:
            fresh = await repo.get_handoff(db, row.id)
            if fresh is not None and turn.text:
                fresh.last_question = turn.text[:4000]
        await self.live.emit(QUEUE_CHANNEL, "customer_message", event)
        async with self.db.read() as db:
            position = await repo.queue_position(db, row)
        return _acknowledge(f"您已在人工客服排队中，前面还有 {position - 1} 位客户，请稍候。", "queued")

    async def customer_signal(
        self, session_id: str, owner_id: str | None, kind: str, message_id: int | None
    ) -> None:
        """The customer is typing, or has read an agent's message: told to the agent holding the session."""
        await self.sessions.get(session_id, owner_id=owner_id)
        async with self.db.read() as db:
            row = await repo.open_handoff(db, session_id)
            if kind == "read":
                target = await _message(db, message_id or 0)
                if target is None or target.session_id != session_id or target.role != "agent":
                    raise NotFound("消息不存在")
        if row is None or row.agent_id is None:
            return
        if kind == "typing":
            await self.live.signal(agent_channel(row.agent_id), "customer_typing", {"session_id": session_id})
        else:
            await self.live.emit(
                agent_channel(row.agent_id),
                "message_read",
                {"session_id": session_id, "message_id": message_id},
            )

    # -- an agent's actions ---------------------------------------------------------------------

    async def queue(self) -> list[dict[str, Any]]:
        async with self.db.read() as db:
            rows = await repo.queue(db)
        return [await self.item(row, position=index + 1) for index, row in enumerate(rows)]

    async def held(self, agent: Acting) -> list[dict[str, Any]]:
        async with self.db.read() as db:
            rows = await repo.held_by(db, agent.agent_id)
        return [await self.item(row) for row in rows]

    async def detail(self, agent: Acting, session_id: str) -> dict[str, Any]:
        async with self.db.read() as db:
            row = await repo.latest_handoff(db, session_id)
            notes = await repo.notes(db, row.id) if row is not None else []
        if row is None:
            raise NotFound(SESSION_MISSING)
        item = await self.item(row)
        item["notes"] = [note_wire(note) for note in notes]
        return item

    async def claim(self, agent: Acting, session_id: str) -> dict[str, Any]:
        async with self.db.transaction() as db:
            me = await self._ensure(db, agent)
        async with self.db.read() as db:
            row = await repo.open_handoff(db, session_id)
            held = (await repo.active_counts(db, [agent.agent_id])).get(agent.agent_id, 0)
        if row is None:
            raise NotFound(NOT_QUEUED)
        if row.status != repo.QUEUED:
            raise Conflict(CLAIMED_BY_OTHER)
        if held >= me.max_concurrent:
            raise Conflict(AGENT_FULL)
        if not await self._take(row, agent.agent_id, agent.name, action="agent.claim"):
            raise Conflict(CLAIMED_BY_OTHER)
        async with self.db.read() as db:
            return await self.item(await repo.get_handoff(db, row.id) or row)

    async def _held(self, agent: Acting, session_id: str) -> Handoff:
        """The open hand-off of a session this agent holds, or the error saying why not."""
        async with self.db.read() as db:
            row = await repo.open_handoff(db, session_id)
            latest = row or await repo.latest_handoff(db, session_id)
        if latest is None:
            raise NotFound(SESSION_MISSING)
        if row is None:
            raise Conflict(ALREADY_CLOSED)
        if row.status != repo.ASSIGNED or row.agent_id != agent.agent_id:
            raise Forbidden(NOT_HOLDING)
        return row

    def _content(self, content: str) -> str:
        text = content.strip()
        if not text:
            raise BadRequest("消息内容不能为空")
        if len(text) > self.settings.max_message_chars:
            raise BadRequest(f"消息内容过长，最多 {self.settings.max_message_chars} 个字符")
        return text

    async def reply(self, agent: Acting, session_id: str, content: str, *, internal: bool) -> dict[str, Any]:
        text = self._content(content)
        row = await self._held(agent, session_id)
        if internal:
            async with self.db.transaction() as db:
                note = await repo.add_note(
                    db, handoff=row, agent_id=agent.agent_id, agent_name=agent.name, content=text, at=utcnow()
                )
            await self.audit.record(
                agent.audit,
                "agent.note",
                target_type="session",
                target_id=session_id,
                customer_id=row.user_id,
                detail={"handoff_id": row.id},
            )
            return {"note": note_wire(note)}
        message = await self.sessions.add_message(
            session_id,
            row.user_id,
            role="agent",
            content=text,
            engine="agent",
            agent_id=agent.agent_id,
            agent_name=agent.name,
        )
        wire = message_wire(message)
        await self.live.emit(
            session_channel(session_id), "agent_message", {"session_id": session_id, "message": wire}
        )
        await self.audit.record(
            agent.audit,
            "agent.reply",
            target_type="session",
            target_id=session_id,
            customer_id=row.user_id,
            detail={"handoff_id": row.id, "message_id": message.id},
        )
        return {"message": wire}

    async def typing(self, agent: Acting, session_id: str) -> None:
        await self._held(agent, session_id)
        await self.live.signal(
            session_channel(session_id), "agent_typing", {"session_id": session_id, "agent_name": agent.name}
        )

    async def transfer(self, agent: Acting, session_id: str, to_agent: str) -> dict[str, Any]:
        row = await self._held(agent, session_id)
        if to_agent == agent.agent_id:
            raise BadRequest(SELF_TRANSFER)
        async with self.db.read() as db:
            target = await repo.get_agent(db, to_agent)
            held = (await repo.active_counts(db, [to_agent])).get(to_agent, 0)
        if target is None:
            raise NotFound(UNKNOWN_AGENT)
        if self.effective_status(target) != "online" or held >= target.max_concurrent:
            raise Conflict(AGENT_UNAVAILABLE)
        async with self.db.transaction() as db:
            if not await repo.transfer(db, row.id, from_agent=agent.agent_id, to_agent=to_agent):
                raise Conflict(NOT_HOLDING)
        async with self.db.read() as db:
            moved = await repo.get_handoff(db, row.id) or row
        item = await self.item(moved)
        await self.live.emit(
            agent_channel(agent.agent_id),
            "transferred_away",
            {"session_id": session_id, "to_agent_id": to_agent},
        )
        await self.live.emit(agent_channel(to_agent), "assigned", {"item": item})
        await self.live.emit(
            session_channel(session_id), "agent_joined", {"session_id": session_id, "agent_name": target.name}
        )
        await self.audit.record(
            agent.audit,
            "agent.transfer",
            target_type="session",
            target_id=session_id,
            customer_id=row.user_id,
            detail={"handoff_id": row.id, "to_agent": to_agent},
        )
        return item

    async def close(self, agent: Acting, session_id: str) -> dict[str, Any]:
        row = await self._held(agent, session_id)
        async with self.db.transaction() as db:
            if not await repo.close(db, row.id, agent_id=agent.agent_id, at=utcnow()):
                raise Conflict(ALREADY_CLOSED)
            await repo.set_session_status(db, session_id, ACTIVE)
        async with self.db.read() as db:
            closed = await repo.get_handoff(db, row.id) or row
        await self.live.emit(
            session_channel(session_id),
            "closed",
            {"session_id": session_id, "handoff_id": row.id, "rating_requested": True},
        )
        await self.live.emit(
            agent_channel(agent.agent_id), "closed", {"session_id": session_id, "handoff_id": row.id}
        )
        await self.audit.record(
            agent.audit,
            "agent.close",
            target_type="session",
            target_id=session_id,
            customer_id=row.user_id,
            detail={"handoff_id": row.id},
        )
        await self.assign_waiting()
        return await self.item(closed)

    async def rate(
        self, session_id: str, owner_id: str | None, score: Any, comment: str | None
    ) -> dict[str, Any]:
        """The customer's rating (CSAT, 1-5) of the last closed hand-off of the session; once."""
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
            raise BadRequest("评分必须是 1-5 的整数")
        text = (comment or "").strip() or None
        if text is not None and len(text) > RATING_COMMENT_MAX:
            raise BadRequest(f"评价内容不能超过{RATING_COMMENT_MAX}个字符")
        await self.sessions.get(session_id, owner_id=owner_id)
        async with self.db.read() as db:
            row = await repo.latest_handoff(db, session_id)
        if row is None or row.status != repo.CLOSED:
            raise BadRequest("该会话没有可评价的人工服务")
        if row.rated_at is not None:
            raise Conflict("该会话已评价")
        async with self.db.transaction() as db:
            if not await repo.rate(db, row.id, score=score, comment=text, at=utcnow()):
                raise Conflict("该会话已评价")
        if row.agent_id:
            await self.live.emit(
                agent_channel(row.agent_id),
                "rated",
                {"session_id": session_id, "handoff_id": row.id, "score": score, "comment": text},
            )
        return {"session_id": session_id, "handoff_id": row.id, "score": score, "comment": text}

    # -- what an agent sees ---------------------------------------------------------------------

    async def _agent_name(self, agent_id: str | None) -> str:
        if agent_id is None:
            return ""
        async with self.db.read() as db:
            row = await repo.get_agent(db, agent_id)
        return row.name if row is not None else agent_id

    async def item(self, row: Handoff, *, position: int | None = None) -> dict[str, Any]:
        """A queue item: the hand-off with the customer's context."""
        async with self.db.read() as db:
            messages = await repo.conversation(db, row.session_id, limit=CONVERSATION_LIMIT)
            memories, _ = await memories_repo.page(
                db, scope=PRIVATE, owner_id=row.user_id, offset=0, limit=MEMORY_LIMIT, newest_first=True
            )
            if row.status == repo.QUEUED and position is None:
                position = await repo.queue_position(db, row)
            agent = await repo.get_agent(db, row.agent_id) if row.agent_id else None
        now = utcnow()
        end = row.assigned_at or (now if row.status == repo.QUEUED else row.closed_at or now)
        return {
            "handoff_id": row.id,
            "session_id": row.session_id,
            "user_id": row.user_id,
            "status": row.status,
            "reason": row.reason,
            "agent_id": row.agent_id,
            "agent_name": agent.name if agent is not None else row.agent_id,
            "last_question": row.last_question,
            "queued_at": row.created_at.isoformat(),
            "assigned_at": _iso(row.assigned_at),
            "closed_at": _iso(row.closed_at),
            "waited_seconds": round((end - row.created_at).total_seconds(), 1),
            "position": position if row.status == repo.QUEUED else None,
            "sources": row.sources or [],
            "memories": [{"id": memory.id, "content": memory.content} for memory in memories],
            "conversation": [message_wire(message) for message in messages],
            "rating": row.rating,
            "rating_comment": row.rating_comment,
        }

    async def stats(self) -> dict[str, Any]:
        since = utcnow() - RECENT_WINDOW
        async with self.db.read() as db:
            figures = await repo.totals(db)
            recent = await repo.finished_since(db, since)
            online = await repo.online_agents(db, seen_since=self._seen_since())
        waits = [(row.assigned_at - row.created_at).total_seconds() for row in recent if row.assigned_at]
        handling = [
            (row.closed_at - row.assigned_at).total_seconds()
            for row in recent
            if row.closed_at is not None and row.assigned_at is not None
        ]
        tickets_open = None
        if self.tickets is not None:
            try:
                tickets_open = await self.tickets.count_open()
            except Exception:
                logger.exception("could not count open tickets")
        return {
            **figures,
            "wait_p50_seconds": percentile(waits, 0.5),
            "wait_p90_seconds": percentile(waits, 0.9),
            "handling_avg_seconds": round(sum(handling) / len(handling), 1) if handling else None,
            "tickets_open": tickets_open,
            "agents_online": len(online),
        }


async def _message(db: Any, message_id: int) -> Message | None:
    return await db.get(Message, message_id) if message_id else None


async def _acknowledge(text: str, status: str) -> AsyncIterator[ChatEvent]:
    yield DeltaEvent(text=text)
    yield DoneEvent(message_id=None, engine="agent", status=status)


def _dates(values: list[Any]) -> list[date]:
    return [value if isinstance(value, date) else date.fromisoformat(str(value)) for value in values]
