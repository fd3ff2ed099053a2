"""Rate limits per user and per client address: 429 with Retry-After in the envelope, nothing stored.

Counted in memory by default and in the real Redis at 127.0.0.1:6379 when REDIS_URL is set (each
test uses its own key prefix); two app instances on one Redis share the count.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from c_app.db.models import Memory, Message, Upload

from .utils import assert_envelope, chat_body, count, upload

REDIS_URL = "redis://127.0.0.1:6379/0"


def assert_limited(response: Any) -> None:
    assert_envelope(response, 429, "请求过于频繁，请稍后再试", "HTTPException")
    assert "details" not in response.json()["error"]
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60


async def stream(client: Any, user: str = "u1", session: str = "s1") -> Any:
    return await client.post("/api/v1/chat/stream", json=chat_body("你好", user_id=user, session_id=session))


@pytest.fixture(params=["memory", "redis"])
def storage(request: Any) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    return {"redis_url": REDIS_URL, "rate_limit_key_prefix": f"test-{uuid.uuid4().hex}"}


async def test_stream_limit_per_user(start_app: Any, storage: dict[str, Any]) -> None:
    app, client = await start_app(rate_limit_stream="2/minute", **storage)
    for _ in range(2):
        assert (await stream(client)).status_code == 200
    before = await count(app, Message)
    assert_limited(await stream(client))
    assert await count(app, Message) == before  # the refused turn stored nothing
    # Another user from the same address still has their own allowance (the address's is larger).
    assert (await stream(client, user="u2", session="s2")).status_code == 200


async def test_address_limit_covers_many_users(start_app: Any, storage: dict[str, Any]) -> None:
    _app, client = await start_app(rate_limit_stream="2/minute", rate_limit_address_factor=1, **storage)
    assert (await stream(client, user="a", session="sa")).status_code == 200
    assert (await stream(client, user="b", session="sb")).status_code == 200
    assert_limited(await stream(client, user="c", session="sc"))


async def test_upload_and_memory_limits(start_app: Any, storage: dict[str, Any]) -> None:
    app, client = await start_app(rate_limit_upload="1/minute", rate_limit_memory="1/minute", **storage)
    assert (await upload(client, user_id="u1", session_id="s1")).status_code == 200
    assert_limited(await upload(client, user_id="u1", session_id="s1"))
    assert await count(app, Upload) == 1
    body = {"user_id": "u1", "content": "常用地址在上海"}
    assert (await client.post("/api/v1/chat/memory/add", json=body)).status_code == 200
    assert_limited(await client.post("/api/v1/chat/memory/add", json=body))
    assert await count(app, Memory, Memory.owner_id == "u1") == 1
    # Reads are not limited.
    for _ in range(3):
        response = await client.post("/api/v1/chat/memory/retrieve", json={"user_id": "u1", "query": "地址"})
        assert response.status_code == 200


async def test_zero_disables(start_app: Any) -> None:
    _app, client = await start_app(rate_limit_stream="0", rate_limit_address_factor=1)
    for _ in range(5):
        assert (await stream(client)).status_code == 200


async def test_two_instances_share_one_count_in_redis(start_app: Any) -> None:
    shared = {"redis_url": REDIS_URL, "rate_limit_key_prefix": f"test-{uuid.uuid4().hex}"}
    _app1, first = await start_app(rate_limit_stream="3/minute", **shared)
    _app2, second = await start_app(rate_limit_stream="3/minute", **shared)
    assert (await stream(first)).status_code == 200
    assert (await stream(second)).status_code == 200
    assert (await stream(first)).status_code == 200
    assert_limited(await stream(second))
    assert_limited(await stream(first))


async def test_unreachable_redis_lets_requests_through(start_app: Any) -> None:
    from .servers import free_port

    _app, client = await start_app(
        rate_limit_stream="1/minute", redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    for _ in range(2):
        assert (await stream(client)).status_code == 200
