"""Live events for customers and agents, stored then published, so a stream resumes without loss.

`emit` writes the event to `live_events` (its id grows across every replica) and then publishes it
on the bus; `signal` publishes a passing event (typing indicators) without storing it. `stream`
subscribes first, then replays what was stored after the client's Last-Event-ID, then follows the
bus, skipping ids it already sent: every stored event reaches a client once, across reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..db import agents as repo
from ..db.engine import Database
from ..db.models import utcnow
from .bus import EventBus

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
SEEN_MAX = 5000  # ids remembered per stream for de-duplication


@dataclass(frozen=True, slots=True)
class LiveEvent:
    id: int | None  # None: a passing signal (not stored, not resumable)
    type: str
    data: dict[str, Any]


def session_channel(session_id: str) -> str:
    return f"session:{session_id}"


def agent_channel(agent_id: str) -> str:
    return f"agent:{agent_id}"


QUEUE_CHANNEL = "queue"


class LiveEvents:
    def __init__(self, db: Database, bus: EventBus, *, ttl: timedelta) -> None:
        self.db = db
        self.bus = bus
        self.ttl = ttl
        self._emitted = 0

    async def emit(self, channel: str, type: str, data: dict[str, Any]) -> int:
        """Store and publish one event; returns its id."""
        async with self.db.transaction() as db:
            row = await repo.add_event(db, channel=channel, type=type, payload=data, at=utcnow())
            event_id = row.id
        await self._publish(channel, {"id": event_id, "type": type, "data": data})
        self._emitted += 1
        if self._emitted % 500 == 0:
            await self.prune()
        return event_id

    async def signal(self, channel: str, type: str, data: dict[str, Any]) -> None:
        await self._publish(channel, {"id": None, "type": type, "data": data})

    async def _publish(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await self.bus.publish(channel, message)
        except Exception:
            # Stored already: a stream that missed it gets it on its next replay.
            logger.exception("could not publish a live event on %s", channel)

    async def prune(self) -> None:
        async with self.db.transaction() as db:
            await repo.prune_events(db, utcnow() - self.ttl)

    async def forget(self, channel: str) -> None:
        async with self.db.transaction() as db:
            await repo.delete_events(db, channel)

    async def last_id(self) -> int:
        async with self.db.read() as db:
            return await repo.last_event_id(db)

    async def stream(
        self, channels: Sequence[str], after: int | None, *, keepalive: float = KEEPALIVE_SECONDS
    ) -> AsyncIterator[LiveEvent | None]:
        """The channels' events after id `after` (None: from now on), then live; None is a keep-alive."""
        seen: set[int] = set()
        last = after if after is not None else await self.last_id()
        async with self.bus.subscribe(*channels) as subscription:
            iterator = aiter(subscription)
            # Replayed after subscribing: an event stored meanwhile arrives both ways, and is sent once.
            while True:
                async with self.db.read() as db:
                    rows = await repo.events_after(db, channels, last)
                for row in rows:
                    seen.add(row.id)
                    last = row.id
                    yield LiveEvent(row.id, row.type, row.payload)
                if len(rows) < 500:
                    break
            pending: asyncio.Task[Any] | None = None
            try:
                while True:
                    pending = asyncio.ensure_future(anext(iterator))
                    done, _ = await asyncio.wait({pending}, timeout=keepalive)
                    if not done:
                        pending.cancel()
                        with contextlib.suppress(BaseException):
                            await pending
                        pending = None
                        yield None
                        continue
                    try:
                        _channel, message = pending.result()
                    except StopAsyncIteration:
                        return
                    pending = None
                    event_id = message.get("id")
                    if isinstance(event_id, int):
                        if event_id in seen or (after is not None and event_id <= after):
                            continue
                        seen.add(event_id)
                        if len(seen) > SEEN_MAX:
                            seen = set(sorted(seen)[-SEEN_MAX // 2 :])
                    yield LiveEvent(
                        event_id if isinstance(event_id, int) else None,
                        str(message.get("type", "")),
                        message.get("data") or {},
                    )
            finally:
                if pending is not None and not pending.done():
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        await pending
