"""Human agents across two real server processes on one database and one Redis (the event bus):
a customer on A and an agent on B talk live, a stream dropped on A resumes on B, two agents
claiming at once on A and B see exactly one win, and a stop sent to B ends a turn streaming on A."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis.asyncio as redis_async
from redis.exceptions import RedisError

from .llm_standin import StandIn
from .test_agents_live import DEADLINE, sse
from .test_two_processes import server_env, server_process, wait_ready
from .utils import chat_body

REDIS_URL = "redis://127.0.0.1:6379/0"
AGENT = "/api/v1/agent"
A1 = {"X-Agent-Id": "a1", "X-Agent-Name": quote("小王")}
A2 = {"X-Agent-Id": "a2", "X-Agent-Name": quote("小李")}


async def _redis_up() -> bool:
    client = redis_async.from_url(REDIS_URL)
    try:
        return bool(await client.ping())
    except (OSError, RedisError):
        return False
    finally:
        await client.aclose()


TRANSFER = {"kind": "tool", "name": "transfer_to_human", "arguments": "{}"}


@pytest.fixture
async def pair(
    database_settings: dict[str, Any], tmp_path: Path, standin: StandIn
) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    if not await _redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    env = server_env(database_settings, tmp_path)
    env.update(
        REDIS_URL=REDIS_URL,
        BUS_CHANNEL_PREFIX=f"t{uuid.uuid4().hex[:10]}",  # no other run's events
        RATE_LIMIT_KEY_PREFIX=f"t{uuid.uuid4().hex[:10]}",
        AGENT_ASSIGNMENT="claim",
        LLM_API_KEY="test-key",
        LLM_BASE_URL=standin.base_url,
        LLM_TIMEOUT="30",
        PII_MASKING="false",
    )
    with ExitStack() as stack:
        async with httpx.AsyncClient(timeout=60) as client:
            a = stack.enter_context(server_process(env, tmp_path, tmp_path / "a.log"))
            await wait_ready(client, a, tmp_path / "a.log")
            b = stack.enter_context(server_process(env, tmp_path, tmp_path / "b.log"))
            await wait_ready(client, b, tmp_path / "b.log")
            yield client, a, b


async def test_two_replicas(pair, standin):
    """One pair of processes (each start costs seconds) for the three cross-replica behaviours."""
    await customer_on_a_and_agent_on_b_talk_live(pair, standin)
    await two_agents_claiming_on_two_replicas_one_wins(pair, standin)
    await a_stop_sent_to_b_stops_the_turn_on_a(pair, standin)


async def customer_on_a_and_agent_on_b_talk_live(pair, standin):
    client, a, b = pair
    standin.script.append(TRANSFER)  # the model's transfer tool hands the session off
    session = "replica-session"
    assert (
        await client.post(f"{b}{AGENT}/presence", json={"status": "online"}, headers=A1)
    ).status_code == 200
    async with sse(client, f"{b}{AGENT}/events", headers=A1) as agent_events:
        # 转人工 on A (the model's transfer tool): queued, announced on B, claimed there.
        handed = await client.post(f"{a}/api/v1/chat/stream", json=chat_body("转人工", session_id=session))
        assert "正在为您转接人工客服" in handed.text
        queued = await agent_events.until("queue_added")
        assert queued["data"]["item"]["session_id"] == session
        claimed = await client.post(f"{b}{AGENT}/sessions/{session}/claim", headers=A1)
        assert claimed.status_code == 200, claimed.text
        assigned = await agent_events.until("assigned")
        assert assigned["data"]["item"]["session_id"] == session
        assert assigned["data"]["item"]["reason"] == "model"
        async with sse(client, f"{a}/api/v1/chat/session/{session}/events") as customer:
            sent = await client.post(
                f"{b}{AGENT}/sessions/{session}/messages", json={"content": "您好，我是小王"}, headers=A1
            )
            assert sent.status_code == 200
            got = await customer.until("agent_message")
            assert got["data"]["message"]["content"] == "您好，我是小王"
            last_seen = got["id"]
            await client.post(f"{a}/api/v1/chat/stream", json=chat_body("我的包裹丢了", session_id=session))
            told = await agent_events.until("customer_message")
            assert told["data"]["message"]["content"] == "我的包裹丢了"
        # The customer's stream on A dropped; two replies meanwhile; it resumes on B.
        for text in ("请提供运单号", "我来查一下"):
            await client.post(f"{b}{AGENT}/sessions/{session}/messages", json={"content": text}, headers=A1)
        async with sse(
            client, f"{b}/api/v1/chat/session/{session}/events", headers={"Last-Event-ID": last_seen}
        ) as customer:
            replayed = [await customer.next(), await customer.next()]
            assert [e["data"]["message"]["content"] for e in replayed] == ["请提供运单号", "我来查一下"]
            await client.post(
                f"{a}{AGENT}/sessions/{session}/messages", json={"content": "找到了"}, headers=A1
            )
            live = await customer.next()
            assert live["data"]["message"]["content"] == "找到了"
    history = (await client.get(f"{a}/api/v1/chat/session/{session}/messages")).json()["messages"]
    assert [m["content"] for m in history if m["role"] == "agent"] == [
        "您好，我是小王",
        "请提供运单号",
        "我来查一下",
        "找到了",
    ]


async def two_agents_claiming_on_two_replicas_one_wins(pair, standin):
    client, a, b = pair
    await client.post(f"{a}{AGENT}/presence", json={"status": "online"}, headers=A2)
    for index in range(4):
        session = f"race-{index}"
        standin.script.append(TRANSFER)
        await client.post(f"{a}/api/v1/chat/stream", json=chat_body("转人工", session_id=session))
        first, second = await asyncio.gather(
            client.post(f"{a}{AGENT}/sessions/{session}/claim", headers=A1),
            client.post(f"{b}{AGENT}/sessions/{session}/claim", headers=A2),
        )
        assert sorted([first.status_code, second.status_code]) == [200, 409], (first.text, second.text)
        winner = "a1" if first.status_code == 200 else "a2"
        detail = (await client.get(f"{b}{AGENT}/sessions/{session}", headers=A1)).json()["data"]
        assert detail["agent_id"] == winner and detail["status"] == "assigned"


async def a_stop_sent_to_b_stops_the_turn_on_a(pair, standin):
    client, a, b = pair
    session = "stop-session"
    standin.script.clear()
    standin.script.append({"kind": "hang_after", "text": "正在为您查询订单", "chunk": 2})
    async with asyncio.timeout(DEADLINE):
        async with client.stream(
            "POST", f"{a}/api/v1/chat/stream", json=chat_body("帮我查订单", session_id=session)
        ) as streaming:
            lines = streaming.aiter_lines()
            assert (await anext(lines)).startswith("data: ")  # the turn is streaming on A
            stopped = await client.post(f"{b}/api/v1/chat/session/{session}/stop")
            assert stopped.status_code == 200
            assert stopped.json()["data"]["stopped"] is True
            rest = [line async for line in lines]
    assert "data: [DONE]" in rest
    history = (await client.get(f"{b}/api/v1/chat/session/{session}/messages")).json()["messages"]
    assert history[-1]["role"] == "assistant" and history[-1]["status"] == "interrupted"
