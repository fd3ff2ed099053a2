"""Stopping a turn on whichever replica runs it (POST /api/v1/chat/session/{id}/stop).

A stop is both stored and sent: `request` writes the session's stop flag (`stop_requests`) and
publishes on the bus's "stop" channel; every replica listens (`start`) and interrupts the turns it
runs for that session, answering on the request's reply channel. A running turn also checks the
flag itself (`watch`, every STOP_POLL_SECONDS), so a stop whose message was missed (a bus
reconnect) still ends it. With the in-process bus there is no other replica: nothing is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from ..db import agents as repo
from ..db.engine import Database
from ..db.models import utcnow
from .bus import EventBus

logger = logging.getLogger(__name__)

STOP_CHANNEL = "stop"
STOP_POLL_SECONDS = 1.0
ACK_WAIT_SECONDS = 1.5  # how long a stop waits to hear that another replica stopped the turn


class StopSignals:
    def __init__(self, db: Database, bus: EventBus, interrupt: Callable[[str], bool]) -> None:
        self.db = db
        self.bus = bus
        self.interrupt = interrupt
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def distributed(self) -> bool:
        return self.bus.distributed

    async def start(self) -> None:
        if not self.distributed or self._listener is not None:
            return
        self._listener = asyncio.create_task(self._listen())
        try:
            await asyncio.wait_for(self._ready.wait(), timeout=5)
        except TimeoutError:  # the bus is down: the app still serves; stops rely on the flag meanwhile
            logger.warning("event bus unreachable: stops reach other replicas through the stored flag only")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
            self._listener = None

    async def _listen(self) -> None:
        while True:
            try:
                async with self.bus.subscribe(STOP_CHANNEL) as subscription:
                    self._ready.set()
                    async for _channel, payload in subscription:
                        session_id = str(payload.get("session_id", ""))
                        if session_id and self.interrupt(session_id) and payload.get("reply"):
                            await self.bus.publish(str(payload["reply"]), {"stopped": True})
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("stop listener failed; resubscribing")
            await asyncio.sleep(1.0)

    async def request(self, session_id: str, *, stopped_here: bool) -> bool:
        """Flag and broadcast a stop; True when another replica says it stopped a turn."""
        if not self.distributed:
            return False
        await self._flag(session_id)
        try:
            return await self._broadcast(session_id, stopped_here=stopped_here)
        except (OSError, ConnectionError, TimeoutError) as exc:
            logger.warning("stop not broadcast (%s): the flag still stops the turn", type(exc).__name__)
            return False
        except Exception:
            logger.exception("stop not broadcast: the flag still stops the turn")
            return False

    async def _broadcast(self, session_id: str, *, stopped_here: bool) -> bool:
        reply = f"stop-ack:{uuid.uuid4().hex}"
        async with self.bus.subscribe(reply) as acks:
            await self.bus.publish(STOP_CHANNEL, {"session_id": session_id, "reply": reply})
            if stopped_here:
                return False
            try:
                async with asyncio.timeout(ACK_WAIT_SECONDS):
                    async for _channel, _payload in acks:
                        return True
            except TimeoutError:
                return False
        return False

    async def _flag(self, session_id: str) -> None:
        at = utcnow()
        for _ in range(3):
            try:
                async with self.db.transaction() as db:
                    await repo.request_stop(db, session_id, at)
                return
            except IntegrityError:  # two stops at once inserted the row: update it next time round
                continue

    def watch(self, session_id: str, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """Set `stop` when the session's flag is raised after now (a task; cancel it when the turn ends)."""
        if not self.distributed:
            return None
        return asyncio.create_task(self._watch(session_id, utcnow() - timedelta(milliseconds=1), stop))

    async def _watch(self, session_id: str, since: datetime, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(STOP_POLL_SECONDS)
            try:
                async with self.db.read() as db:
                    if await repo.stop_requested(db, session_id, since):
                        stop.set()
                        return
            except Exception:
                logger.warning("could not read the stop flag (session %s)", session_id, exc_info=True)
