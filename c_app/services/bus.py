"""The event bus: one small interface for messages between the parts of one process and between replicas.

    await bus.publish("session:s1", {"type": "agent_message", ...})
    async with bus.subscribe("session:s1", "queue") as events:   # subscribed once entered
        async for channel, payload in events:
            ...

Three implementations, chosen by `build_bus(settings)`:
- `InProcessBus` (the default, one process): asyncio queues;
- `RedisBus` (REDIS_URL): Redis pub/sub, channel names prefixed with BUS_CHANNEL_PREFIX;
- `PostgresBus` (BUS_BACKEND=postgres on a PostgreSQL DATABASE_URL): LISTEN/NOTIFY.

Delivery is at most once, to whoever is subscribed at the moment (pub/sub semantics): what must
survive a dropped connection is stored first (the live event log, the stop flag) and the bus only
carries the news. Payloads are JSON objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol, Self

from ..config import Settings

logger = logging.getLogger(__name__)

Payload = dict[str, Any]
QUEUE_LIMIT = 10_000  # events buffered for one slow subscriber before the oldest are dropped


class Subscription(Protocol):
    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[tuple[str, Payload]]: ...


class EventBus(Protocol):
    """publish(channel, payload); subscribe(*channels) -> an async context manager and iterator."""

    distributed: bool  # reaches other processes

    async def publish(self, channel: str, payload: Payload) -> None: ...

    def subscribe(self, *channels: str) -> Subscription: ...

    async def aclose(self) -> None: ...


class _QueueSubscription:
    """Events arrive in an asyncio queue, filled by the bus (in-process) or a reader task."""

    def __init__(self, channels: tuple[str, ...]) -> None:
        self.channels = channels
        self.queue: asyncio.Queue[tuple[str, Payload] | None] = asyncio.Queue()

    def deliver(self, channel: str, payload: Payload) -> None:
        if self.queue.qsize() >= QUEUE_LIMIT:
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            logger.warning("event bus: a subscriber fell behind, an event was dropped")
        self.queue.put_nowait((channel, payload))

    async def _events(self) -> AsyncIterator[tuple[str, Payload]]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    def __aiter__(self) -> AsyncIterator[tuple[str, Payload]]:
        return self._events()


class InProcessBus:
    distributed = False

    def __init__(self) -> None:
        self._subscribers: dict[str, set[_InProcessSubscription]] = {}

    async def publish(self, channel: str, payload: Payload) -> None:
        # A copy through JSON: the same payloads, and the same isolation, as the other buses.
        data = json.loads(json.dumps(payload, ensure_ascii=False))
        for subscription in list(self._subscribers.get(channel, ())):
            subscription.deliver(channel, data)

    def subscribe(self, *channels: str) -> _InProcessSubscription:
        return _InProcessSubscription(self, channels)

    async def aclose(self) -> None:
        for subscriptions in list(self._subscribers.values()):
            for subscription in list(subscriptions):
                subscription.queue.put_nowait(None)
        self._subscribers.clear()

    def _add(self, subscription: _InProcessSubscription) -> None:
        for channel in subscription.channels:
            self._subscribers.setdefault(channel, set()).add(subscription)

    def _remove(self, subscription: _InProcessSubscription) -> None:
        for channel in subscription.channels:
            subscribers = self._subscribers.get(channel)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[channel]


class _InProcessSubscription(_QueueSubscription):
    def __init__(self, bus: InProcessBus, channels: tuple[str, ...]) -> None:
        super().__init__(channels)
        self.bus = bus

    async def __aenter__(self) -> Self:
        self.bus._add(self)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.bus._remove(self)


class RedisBus:
    """Redis pub/sub. One connection publishes; each subscription holds its own pub/sub connection."""

    distributed = True

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as redis

        self.client = redis.from_url(url, decode_responses=True)
        self.prefix = prefix

    def name(self, channel: str) -> str:
        return f"{self.prefix}:{channel}"

    async def publish(self, channel: str, payload: Payload) -> None:
        await self.client.publish(self.name(channel), json.dumps(payload, ensure_ascii=False))

    def subscribe(self, *channels: str) -> _RedisSubscription:
        return _RedisSubscription(self, channels)

    async def aclose(self) -> None:
        await self.client.aclose()


class _RedisSubscription(_QueueSubscription):
    def __init__(self, bus: RedisBus, channels: tuple[str, ...]) -> None:
        super().__init__(channels)
        self.bus = bus
        self.pubsub: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self.pubsub = self.bus.client.pubsub()
        names = {self.bus.name(channel): channel for channel in self.channels}
        await self.pubsub.subscribe(*names)  # returns once Redis confirmed the subscription
        self.reader = asyncio.create_task(self._read(names))
        return self

    async def _read(self, names: dict[str, str]) -> None:
        try:
            while True:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    payload = json.loads(message["data"])
                except ValueError:
                    continue
                self.deliver(names.get(message["channel"], message["channel"]), payload)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("event bus: the Redis subscription broke")
            self.queue.put_nowait(None)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()


class PostgresBus:
    """PostgreSQL LISTEN/NOTIFY (payloads up to 8000 bytes). Channel names are hashed into
    identifiers; one asyncpg connection per subscription."""

    distributed = True

    def __init__(self, dsn: str, prefix: str) -> None:
        self.dsn = dsn
        self.prefix = prefix
        self._conn: Any = None
        self._lock = asyncio.Lock()

    def name(self, channel: str) -> str:
        import hashlib

        return "b_" + hashlib.sha1(f"{self.prefix}:{channel}".encode()).hexdigest()[:40]

    async def _connection(self) -> Any:
        import asyncpg

        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn)
        return self._conn

    async def publish(self, channel: str, payload: Payload) -> None:
        data = json.dumps({"c": channel, "p": payload}, ensure_ascii=False)
        async with self._lock:
            conn = await self._connection()
            await conn.execute("SELECT pg_notify($1, $2)", self.name(channel), data)

    def subscribe(self, *channels: str) -> _PostgresSubscription:
        return _PostgresSubscription(self, channels)

    async def aclose(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()


class _PostgresSubscription(_QueueSubscription):
    def __init__(self, bus: PostgresBus, channels: tuple[str, ...]) -> None:
        super().__init__(channels)
        self.bus = bus
        self.conn: Any = None

    def _notified(self, _conn: Any, _pid: int, _name: str, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        self.deliver(message["c"], message["p"])

    async def __aenter__(self) -> Self:
        import asyncpg

        self.conn = await asyncpg.connect(self.bus.dsn)
        for channel in self.channels:
            await self.conn.add_listener(self.bus.name(channel), self._notified)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()


def build_bus(settings: Settings) -> EventBus:
    """BUS_BACKEND auto: Redis when REDIS_URL is set, else in-process; postgres: LISTEN/NOTIFY."""
    backend = settings.bus_backend
    if backend == "postgres":
        url = settings.database_url or ""
        if not url.startswith(("postgresql", "postgres")):
            raise ValueError("BUS_BACKEND=postgres needs a PostgreSQL DATABASE_URL")
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        return PostgresBus(dsn, settings.bus_channel_prefix)
    if backend == "redis" or (backend == "auto" and settings.redis_url):
        if not settings.redis_url:
            raise ValueError("BUS_BACKEND=redis needs REDIS_URL")
        return RedisBus(settings.redis_url, settings.bus_channel_prefix)
    return InProcessBus()
