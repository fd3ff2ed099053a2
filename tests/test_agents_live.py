"""Human agents, live, on a real server: the customer's SSE stream and WebSocket, the agent's SSE
stream, typing and read receipts, and a dropped customer stream resumed with Last-Event-ID (nothing
lost, nothing twice)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import websockets

from c_app.main import create_app

from .servers import serve
from .utils import chat_body

DEADLINE = 20.0  # bounds a broken build only; every wait below ends on the event it waits for
AGENT = "/api/v1/agent"
A1 = {"X-Agent-Id": "a1", "X-Agent-Name": quote("小王")}
SESSION = "live-session"


class Events:
    """An open SSE stream, read event by event (comments skipped)."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(DEADLINE):
            event: dict[str, Any] = {}
            async for line in self.lines:
                if not line:
                    if "event" in event:
                        return event
                    event = {}
                    continue
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(": ")
                event[field] = json.loads(value) if field == "data" else value
        raise AssertionError("stream ended")

    async def until(self, kind: str) -> dict[str, Any]:
        while (event := await self.next())["event"] != kind:
            pass
        return event


@asynccontextmanager
async def sse(client: httpx.AsyncClient, url: str, **kwargs: Any) -> AsyncIterator[Events]:
    async with client.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        assert await anext(lines) == ": connected"  # subscribed: what follows is not missed
        events = Events(response)
        events.lines = lines
        yield events


async def held_session(client: httpx.AsyncClient) -> None:
    assert (await client.post(f"{AGENT}/presence", json={"status": "online"}, headers=A1)).status_code == 200
    await client.post("/api/v1/chat/stream", json=chat_body("转人工", session_id=SESSION))
    claimed = await client.post(f"{AGENT}/sessions/{SESSION}/claim", headers=A1)
    assert claimed.status_code == 200, claimed.text


async def say(client: httpx.AsyncClient, text: str) -> dict[str, Any]:
    sent = await client.post(f"{AGENT}/sessions/{SESSION}/messages", json={"content": text}, headers=A1)
    assert sent.status_code == 200, sent.text
    message: dict[str, Any] = sent.json()["data"]["message"]
    return message


async def test_customer_and_agent_live_with_resume(make_settings):
    with serve(create_app(make_settings(agent_assignment="claim"))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=DEADLINE) as client:
            await held_session(client)
            customer_url = f"/api/v1/chat/session/{SESSION}/events"
            async with sse(client, f"{AGENT}/events", headers=A1) as agent_events:
                async with sse(client, customer_url) as customer:
                    # The customer writes (the /stream door): the agent sees it live.
                    await client.post("/api/v1/chat/stream", json=chat_body("在吗", session_id=SESSION))
                    got = await agent_events.until("customer_message")
                    assert got["data"]["message"]["content"] == "在吗"
                    assert got["data"]["session_id"] == SESSION

                    await client.post(f"{AGENT}/sessions/{SESSION}/typing", headers=A1)
                    typing = await customer.until("agent_typing")
                    assert typing["data"]["agent_name"] == "小王" and "id" not in typing

                    first = await say(client, "第一条")
                    event = await customer.until("agent_message")
                    assert event["data"]["message"]["id"] == first["id"]
                    assert event["data"]["message"]["agent_name"] == "小王"
                    resume_from = event["id"]
                # The customer's stream dropped; the agent goes on.
                second = await say(client, "第二条")
                third = await say(client, "第三条")
                async with sse(client, customer_url, headers={"Last-Event-ID": resume_from}) as customer:
                    replayed = [await customer.next(), await customer.next()]
                    assert [e["data"]["message"]["id"] for e in replayed] == [second["id"], third["id"]]
                    fourth = await say(client, "第四条")
                    live = await customer.next()
                    assert live["event"] == "agent_message" and live["data"]["message"]["id"] == fourth["id"]
                    ids = [int(e["id"]) for e in [*replayed, live]]
                    assert ids == sorted(set(ids)) and min(ids) > int(resume_from)

                    read = await client.post(
                        f"/api/v1/chat/session/{SESSION}/read", json={"message_id": fourth["id"]}
                    )
                    assert read.status_code == 200
                    receipt = await agent_events.until("message_read")
                    assert receipt["data"] == {"session_id": SESSION, "message_id": fourth["id"]}

                    await client.post(f"/api/v1/chat/session/{SESSION}/typing")
                    assert (await agent_events.until("customer_typing"))["data"] == {"session_id": SESSION}

                    await client.post(f"{AGENT}/sessions/{SESSION}/close", headers=A1)
                    closed = await customer.until("closed")
                    assert closed["data"]["rating_requested"] is True
            # History holds every agent message once.
            history = (await client.get(f"/api/v1/chat/session/{SESSION}/messages")).json()["messages"]
            agent_lines = [m["content"] for m in history if m["role"] == "agent"]
            assert agent_lines == ["第一条", "第二条", "第三条", "第四条"]


async def test_customer_websocket_gets_agent_messages(make_settings):
    with serve(create_app(make_settings(agent_assignment="claim"))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=DEADLINE) as client:
            await held_session(client)
            ws_url = base.replace("http://", "ws://") + "/api/v1/chat/ws"
            async with websockets.connect(ws_url) as ws, asyncio.timeout(DEADLINE):
                assert json.loads(await ws.recv())["type"] == "ready"
                await ws.send(json.dumps({"type": "message", **chat_body("我的订单呢", session_id=SESSION)}))
                frames = []
                while not frames or frames[-1]["type"] != "done":
                    frames.append(json.loads(await ws.recv()))
                assert frames[0] == {"type": "delta", "text": "已转交人工客服，客服会尽快回复您"}
                sent = await say(client, "马上帮您查")
                while (frame := json.loads(await ws.recv()))["type"] != "agent_message":
                    pass
                assert frame["message"]["id"] == sent["id"] and frame["message"]["content"] == "马上帮您查"
                assert isinstance(frame["id"], int)
                async with sse(client, f"{AGENT}/events", headers=A1) as agent_events:
                    await ws.send(
                        json.dumps({"type": "read", "session_id": SESSION, "message_id": sent["id"]})
                    )
                    receipt = await agent_events.until("message_read")
                    assert receipt["data"]["message_id"] == sent["id"]
                await ws.send(json.dumps({"type": "read", "session_id": SESSION, "message_id": "x"}))
                while (frame := json.loads(await ws.recv()))["type"] != "error":
                    pass
                assert frame["code"] == 422


async def test_event_stream_refusals(make_settings):
    with serve(create_app(make_settings())) as base:
        async with httpx.AsyncClient(base_url=base, timeout=DEADLINE) as client:
            missing = await client.get("/api/v1/chat/session/nope/events")
            assert missing.status_code == 404 and missing.json()["error"]["message"] == "会话不存在"
            await client.post("/api/v1/chat/stream", json=chat_body("你好", session_id=SESSION))
            bad = await client.get(f"/api/v1/chat/session/{SESSION}/events", headers={"Last-Event-ID": "abc"})
            assert bad.status_code == 400
