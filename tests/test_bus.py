"""The event bus (c_app/services/bus.py): the same behaviour from each implementation - a subscriber
gets what is published on its channels after it subscribed, in order, and nothing of other channels."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from c_app.config import Settings
from c_app.services.bus import EventBus, InProcessBus, PostgresBus, RedisBus, build_bus

from .conftest import BACKEND, PG_URL
from .test_agents_replicas import REDIS_URL, _redis_up


@pytest.fixture(params=["memory", "redis", "postgres"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    made: EventBus
    if request.param == "memory":
        made = InProcessBus()
    elif request.param == "redis":
        if not await _redis_up():
            pytest.skip("no Redis")
        made = RedisBus(REDIS_URL, prefix)
    else:
        if BACKEND != "postgresql":
            pytest.skip("LISTEN/NOTIFY: PostgreSQL runs only")
        made = PostgresBus(PG_URL, prefix)
    try:
        yield made
    finally:
        await made.aclose()


async def test_subscribers_get_their_channels_in_order(bus: EventBus) -> None:
    async with bus.subscribe("a", "b") as both, bus.subscribe("b") as only_b:
        await bus.publish("c", {"n": 0})  # nobody listens there
        for n in range(1, 4):
            await bus.publish("a" if n % 2 else "b", {"n": n, "text": "中文"})
        got: list[tuple[str, int]] = []
        async with asyncio.timeout(10):
            async for channel, payload in both:
                got.append((channel, payload["n"]))
                assert payload["text"] == "中文"
                if len(got) == 3:
                    break
            channel, payload = await anext(aiter(only_b))
        assert got == [("a", 1), ("b", 2), ("a", 3)]
        assert (channel, payload["n"]) == ("b", 2)


async def test_build_bus_follows_the_settings() -> None:
    assert isinstance(build_bus(Settings(_env_file=None)), InProcessBus)  # type: ignore[call-arg]
    redis_bus = build_bus(Settings(_env_file=None, redis_url=REDIS_URL))  # type: ignore[call-arg]
    assert isinstance(redis_bus, RedisBus) and redis_bus.distributed
    await redis_bus.aclose()
    with pytest.raises(ValueError, match="PostgreSQL"):
        build_bus(Settings(_env_file=None, bus_backend="postgres"))  # type: ignore[call-arg]
