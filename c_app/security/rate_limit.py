"""Rate limits per user and per client address, counted by the `limits` library.

Moving-window counts live in Redis when REDIS_URL is set (so every replica shares one count) and
in process memory otherwise. A limit is "N/period" in the library's notation ("30/minute");
"0" or empty disables it. When Redis is unreachable the request is let through (logged): a rate
limiter must not turn a Redis outage into an API outage.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from ..config import Settings
from ..errors import TooManyRequests

logger = logging.getLogger(__name__)

TOO_MANY = "请求过于频繁，请稍后再试"


def parse_limit(value: str | None) -> RateLimitItem | None:
    value = (value or "").strip()
    if not value or value == "0":
        return None
    item = parse(value)
    return item if item.amount > 0 else None


@dataclass(frozen=True, slots=True)
class Refusal:
    retry_after: int


class RateLimits:
    """The app's limits by name ("stream", "upload", "memory", "retrieve") and the storage that counts them."""

    def __init__(self, settings: Settings) -> None:
        self.items: dict[str, RateLimitItem | None] = {
            "stream": parse_limit(settings.rate_limit_stream),
            "upload": parse_limit(settings.rate_limit_upload),
            "memory": parse_limit(settings.rate_limit_memory),
            "retrieve": parse_limit(settings.rate_limit_retrieve),
        }
        self.address_items = {
            name: type(item)(item.amount * settings.rate_limit_address_factor, item.multiples)
            for name, item in self.items.items()
            if item is not None
        }
        self.prefix = settings.rate_limit_key_prefix
        self.storage: Storage
        if settings.redis_url:
            uri = settings.redis_url
            uri = uri if uri.startswith("async+") else "async+" + uri
            self.storage = RedisStorage(uri, wrap_exceptions=True, key_prefix=f"{self.prefix}:limits")
        else:
            self.storage = MemoryStorage(wrap_exceptions=True)
        self.limiter = MovingWindowRateLimiter(self.storage)

    async def hit(self, name: str, *identities: str) -> Refusal | None:
        """Count one request against every identity ("user:..", "ip:.."); a refusal names the wait."""
        if self.items.get(name) is None:
            return None
        for identity in identities:
            item = self.address_items[name] if identity.startswith("ip:") else self.items.get(name)
            assert item is not None  # checked above
            try:
                if await self.limiter.hit(item, self.prefix, name, identity):
                    continue
                stats = await self.limiter.get_window_stats(item, self.prefix, name, identity)
            except StorageError:
                logger.warning("rate-limit storage unavailable; %s not limited", name, exc_info=True)
                return None
            return Refusal(retry_after=max(1, math.ceil(stats.reset_time - time.time())))
        return None

    async def check(self, name: str, *identities: str) -> None:
        refusal = await self.hit(name, *identities)
        if refusal is not None:
            raise TooManyRequests(TOO_MANY, headers={"Retry-After": str(refusal.retry_after)})

    async def aclose(self) -> None:
        # Memory storage runs an expiry task, Redis storage holds a connection pool: release both.
        timer = getattr(self.storage, "timer", None)
        if timer is not None and not timer.done():
            timer.cancel()
        client = getattr(getattr(self.storage, "bridge", None), "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()
