"""Typed SSE, stop, WebSocket and the OpenAI-compatible door, against a real server on loopback,
with clients that are not ours: httpx-sse, websockets, and the official openai SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import websockets
from httpx_sse import aconnect_sse

from c_app.db.models import ChatSession, Message
from c_app.main import create_app

from .llm_standin import StandIn
from .servers import serve
from .utils import chat_body, rows

KEY = "sk-channels-test"


@pytest.fixture
async def live(make_settings) -> AsyncIterator[tuple[str, object]]:
    settings = make_settings(ws_heartbeat_seconds=5)
    with serve(create_app(settings)) as base:
        yield base, settings


@pytest.fixture
async def live_llm(make_settings, standin) -> AsyncIterator[tuple[str, object, StandIn]]:
    settings = make_settings(llm_api_key=KEY, llm_base_url=standin.base_url, llm_timeout=30)
    with serve(create_app(settings)) as base:
        yield base, settings, standin


async def stored(settings, *where):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        return await rows(app, Message, *where)


async def test_typed_sse_events_with_ids(live):
    base, settings = live
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as client,
        aconnect_sse(
            client, "POST", "/api/v1/chat/stream?events=typed", json=chat_body("买东西怎么开发票？")
        ) as source,
    ):
        events = [(sse.event, sse.id, json.loads(sse.data)) async for sse in source.aiter_sse()]
    kinds = [kind for kind, _, _ in events]
    assert kinds[0] == "sources" and kinds[-1] == "done"
    assert kinds.count("delta") > 3
    assert [int(i) for _, i, _ in events] == list(range(1, len(events) + 1))
    text = "".join(data["text"] for kind, _, data in events if kind == "delta")
    done = events[-1][2]
    assert done["status"] == "complete" and done["engine"] == "knowledge_base"
    [answer] = await stored(settings, Message.role == "assistant")
    assert answer.id == done["message_id"] and answer.content == text
    suggestions = [data for kind, _, data in events if kind == "suggestions"]
    assert suggestions and 1 <= len(suggestions[0]["questions"]) <= 3
    assert "买东西怎么开发票？" not in suggestions[0]["questions"]


async def test_typed_events_by_accept_header(live):
    base, _ = live
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        response = await client.post(
            "/api/v1/chat/stream", json=chat_body("你好"), headers={"Accept": "application/vnd.c-app.events"}
        )
    assert response.text.startswith("event: ")
    assert "event: done" in response.text


async def test_stop_endpoint_ends_the_answer_and_keeps_the_partial(live_llm):
    base, settings, standin = live_llm
    standin.script.append({"kind": "slow", "text": "这是一个很长的回答" * 20, "chunk": 1, "delay": 0.05})
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def read() -> list[dict]:
            async with aconnect_sse(
                client, "POST", "/api/v1/chat/stream?events=typed", json=chat_body("说吧")
            ) as src:
                return [json.loads(sse.data) | {"kind": sse.event} async for sse in src.aiter_sse()]

        reader = asyncio.create_task(read())
        while not standin.requests:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        stop = await client.post("/api/v1/chat/session/session456/stop")
        events = await reader
    assert stop.status_code == 200 and stop.json()["data"]["stopped"] is True
    done = events[-1]
    assert done["kind"] == "done" and done["status"] == "interrupted"
    [answer] = await stored(settings, Message.role == "assistant")
    assert answer.status == "interrupted" and 0 < len(answer.content) < len("这是一个很长的回答" * 20)
    await asyncio.sleep(0.2)
    assert standin.disconnects, "stopping closed the upstream request"


async def test_stop_refuses_unknown_session_and_reports_idle(live):
    base, _ = live
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.post("/api/v1/chat/session/nope/stop")).status_code == 404
        await client.post("/api/v1/chat/stream", json=chat_body("你好"))
        idle = await client.post("/api/v1/chat/session/session456/stop")
    assert idle.status_code == 200 and idle.json()["data"]["stopped"] is False


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/api/v1/chat/ws"


async def frames_until_done(ws) -> list[dict]:
    out = []
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame["type"] == "ping":
            continue
        out.append(frame)
        if frame["type"] in ("done", "error"):
            return out


async def test_websocket_turns_on_one_connection(live):
    base, settings = live
    async with websockets.connect(ws_url(base)) as ws:
        assert json.loads(await ws.recv()) == {"type": "ready"}
        await ws.send(json.dumps({"type": "message", **chat_body("买东西怎么开发票？")}))
        first = await frames_until_done(ws)
        await ws.send(json.dumps({"type": "message", **chat_body("谢谢")}))
        second = await frames_until_done(ws)
    assert first[-1]["type"] == "done" and first[-1]["status"] == "complete"
    assert any(f["type"] == "sources" for f in first)
    assert sum(f["type"] == "delta" for f in first) > 3
    assert "".join(f["text"] for f in second if f["type"] == "delta").startswith("不客气")
    assert len(await stored(settings)) == 4


async def test_websocket_stop_frame(live_llm):
    base, settings, standin = live_llm
    standin.script.append({"kind": "slow", "text": "慢慢说" * 40, "chunk": 1, "delay": 0.05})
    async with websockets.connect(ws_url(base)) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "message", **chat_body("讲讲")}))
        got = [json.loads(await ws.recv()) for _ in range(5)]
        assert any(f["type"] == "delta" for f in got)
        await ws.send(json.dumps({"type": "stop"}))
        rest = await frames_until_done(ws)
        assert rest[-1]["status"] == "interrupted"
        # The connection carries on after a stop.
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv()) == {"type": "pong"}
    [answer] = await stored(settings, Message.role == "assistant")
    assert answer.status == "interrupted"


async def test_websocket_malformed_frames_get_error_frames(live):
    base, settings = live
    async with websockets.connect(ws_url(base)) as ws:
        await ws.recv()
        for bad in (
            "not json",
            "[1, 2]",
            json.dumps({"type": "warp"}),
            json.dumps({"type": "message", "user_id": "u"}),
        ):
            await ws.send(bad)
            frame = json.loads(await ws.recv())
            assert frame["type"] == "error", bad
        await ws.send(json.dumps({"type": "message", **chat_body("")}))
        assert json.loads(await ws.recv()) == {"type": "error", "message": "消息内容不能为空", "code": 400}
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv()) == {"type": "pong"}
    assert await stored(settings) == []


async def test_websocket_refuses_binary_and_oversized_frames(live):
    base, _ = live
    async with websockets.connect(ws_url(base)) as ws:
        await ws.recv()
        await ws.send(b"\x00\x01")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1003
    async with websockets.connect(ws_url(base), max_size=None) as ws:
        await ws.recv()
        await ws.send("x" * (2 * 1024 * 1024))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1009


async def test_websocket_heartbeat_closes_silent_clients(make_settings):
    with serve(create_app(make_settings(ws_heartbeat_seconds=0.2))) as base:
        async with websockets.connect(ws_url(base)) as ws:
            frames = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        assert {"type": "ping"} in frames
        assert closed.value.rcvd.code == 1001
        async with websockets.connect(ws_url(base)) as ws:
            # A client that answers the heartbeat stays connected.
            for _ in range(6):
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
            await ws.send(json.dumps({"type": "ping"}))
            while (frame := json.loads(await ws.recv()))["type"] == "ping":
                pass
            assert frame == {"type": "pong"}


async def test_openai_sdk_non_streaming_and_streaming_keep_the_conversation(live):
    base, settings = live
    client = openai.AsyncOpenAI(api_key="unused", base_url=base + "/v1", max_retries=0)
    try:
        models = await client.models.list()
        assert [m.id for m in models.data] == ["c_app-customer-service"]
        completion = await client.chat.completions.create(
            model="c_app-customer-service",
            messages=[{"role": "user", "content": "买东西怎么开发票？"}],
            user="sdk-user",
            extra_headers={"X-Session-Id": "sdk-session"},
        )
        text = completion.choices[0].message.content
        assert text and "发票" in text
        assert completion.usage is not None and completion.usage.total_tokens > 0
        stream = await client.chat.completions.create(
            model="c_app-customer-service",
            messages=[{"role": "user", "content": "谢谢"}],
            user="sdk-user",
            stream=True,
            extra_headers={"X-Session-Id": "sdk-session"},
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        assert "".join(pieces).startswith("不客气")
        assert len([p for p in pieces if p]) > 1
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="c_app-customer-service", messages=[{"role": "user", "content": "你好"}]
            )
    finally:
        await client.close()
    messages = await stored(settings, Message.session_id == "sdk-session")
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        [session] = await rows(app, ChatSession, ChatSession.id == "sdk-session")
    assert session.user_id == "sdk-user" and session.message_count == 4


async def test_openai_default_session_per_user(live):
    base, settings = live
    async with openai.AsyncOpenAI(api_key="unused", base_url=base + "/v1", max_retries=0) as client:
        for text in ("你好", "谢谢"):
            await client.chat.completions.create(
                model="x", messages=[{"role": "user", "content": text}], user="plain-user"
            )
    messages = await stored(settings, Message.session_id == "openai-plain-user")
    assert len(messages) == 4


async def test_websocket_turns_count_against_the_stream_rate_limit(make_settings):
    with serve(create_app(make_settings(rate_limit_stream="1/minute"))) as base:
        async with websockets.connect(ws_url(base)) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "message", **chat_body("你好")}))
            assert (await frames_until_done(ws))[-1]["type"] == "done"
            await ws.send(json.dumps({"type": "message", **chat_body("谢谢")}))
            refused = json.loads(await ws.recv())
    assert refused["type"] == "error" and refused["code"] == 429


async def test_openai_door_counts_against_the_stream_rate_limit(make_settings):
    with serve(create_app(make_settings(rate_limit_stream="1/minute"))) as base:
        async with openai.AsyncOpenAI(api_key="unused", base_url=base + "/v1", max_retries=0) as client:
            await client.chat.completions.create(
                model="x", messages=[{"role": "user", "content": "你好"}], user="rl"
            )
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(
                    model="x", messages=[{"role": "user", "content": "你好"}], user="rl"
                )
