"""Human agents (issue 10), in one process: hand-off, queue, claim, live conversation, notes,
transfer, close, rating, and every refusal (seed envelope, nothing changed)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select

from c_app.db.models import AuditEntry, ChatSession, Handoff, HandoffNote, LiveEvent, Message

from .utils import answer_text, assert_envelope, chat_body, count, rows

STREAM = "/api/v1/chat/stream"
AGENT = "/api/v1/agent"
A1 = {"X-Agent-Id": "a1", "X-Agent-Name": quote("小王")}
A2 = {"X-Agent-Id": "a2", "X-Agent-Name": quote("小李")}
SESSION = "session456"


async def online(client: httpx.AsyncClient, headers: dict[str, str], **extra: Any) -> dict[str, Any]:
    response = await client.post(f"{AGENT}/presence", json={"status": "online", **extra}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def status_of(app: Any, session_id: str = SESSION) -> str:
    [session] = await rows(app, ChatSession, ChatSession.id == session_id)
    return session.status


@pytest.fixture
async def claim_app(start_app):
    return await start_app(agent_assignment="claim")


async def test_the_whole_loop_in_claim_mode(claim_app):
    app, client = claim_app
    await online(client, A1)
    await online(client, A2)
    await client.post(STREAM, json=chat_body("我的快递三天没动了"))
    answer = answer_text((await client.post(STREAM, json=chat_body("转人工"))).text)
    assert "正在为您转接人工客服" in answer and "您前面还有 0 位客户" in answer
    assert await status_of(app) == "waiting_human"

    queue = (await client.get(f"{AGENT}/queue", headers=A1)).json()["data"]
    assert queue["total"] == 1
    [item] = queue["items"]
    assert item["session_id"] == SESSION and item["position"] == 1 and item["reason"] == "customer"
    assert item["last_question"] == "转人工"
    assert item["conversation"][0]["content"] == "我的快递三天没动了"
    assert item["waited_seconds"] >= 0

    # While queued the bot only acknowledges, and the queue item follows the latest question.
    queued = answer_text((await client.post(STREAM, json=chat_body("有人吗"))).text)
    assert "排队" in queued
    [row] = await rows(app, Handoff)
    assert row.last_question == "有人吗"

    claimed = await client.post(f"{AGENT}/sessions/{SESSION}/claim", headers=A1)
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["data"]["agent_id"] == "a1"
    assert await status_of(app) == "with_agent"
    assert_envelope(
        await client.post(f"{AGENT}/sessions/{SESSION}/claim", headers=A2), 409, "该会话已被其他客服接入"
    )

    # A held session: the customer's /stream gets a short acknowledgement, never a bot answer.
    before = await count(app, Message, Message.role == "assistant")
    held = await client.post(STREAM, json=chat_body("运单号 123456"))
    assert held.text.endswith("data: [DONE]\n\n")
    assert answer_text(held.text) == "已转交人工客服，客服会尽快回复您"
    assert await count(app, Message, Message.role == "assistant") == before

    sent = await client.post(
        f"{AGENT}/sessions/{SESSION}/messages", json={"content": "您好，我来帮您查"}, headers=A1
    )
    assert sent.status_code == 200, sent.text
    message = sent.json()["data"]["message"]
    assert message["role"] == "agent" and message["agent_name"] == "小王"
    note = await client.post(
        f"{AGENT}/sessions/{SESSION}/messages", json={"content": "客户很着急", "internal": True}, headers=A1
    )
    assert note.status_code == 200 and note.json()["data"]["note"]["content"] == "客户很着急"
    history = (await client.get(f"/api/v1/chat/session/{SESSION}/messages")).json()["messages"]
    assert [m["role"] for m in history][-2:] == ["user", "agent"]
    assert history[-1]["content"] == "您好，我来帮您查"
    assert all("客户很着急" not in m["content"] for m in history)
    assert [n.content for n in await rows(app, HandoffNote)] == ["客户很着急"]
    detail = (await client.get(f"{AGENT}/sessions/{SESSION}", headers=A1)).json()["data"]
    assert [n["content"] for n in detail["notes"]] == ["客户很着急"]

    # Bad input: refused in the seed's envelope, nothing stored.
    messages = await count(app, Message)
    assert_envelope(
        await client.post(f"{AGENT}/sessions/{SESSION}/messages", json={"content": "抢答"}, headers=A2),
        403,
        "您未接入该会话",
    )
    assert_envelope(
        await client.post(f"{AGENT}/sessions/{SESSION}/messages", json={"content": "x" * 4001}, headers=A1),
        400,
        "消息内容过长，最多 4000 个字符",
    )
    assert_envelope(
        await client.post(f"{AGENT}/sessions/{SESSION}/messages", json={"content": "  "}, headers=A1),
        400,
        "消息内容不能为空",
    )
    assert_envelope(
        await client.post(f"{AGENT}/sessions/{SESSION}/transfer", json={"agent_id": "nobody"}, headers=A1),
        404,
        "客服不存在",
    )
    await client.post(f"{AGENT}/presence", json={"status": "offline"}, headers=A2)
    assert_envelope(
        await client.post(f"{AGENT}/sessions/{SESSION}/transfer", json={"agent_id": "a2"}, headers=A1),
        409,
        "目标客服不在线或已满",
    )
    assert_envelope(await client.post(f"/api/v1/chat/session/{SESSION}/rating", json={"score": 5}), 400)
    assert await count(app, Message) == messages
    [row] = await rows(app, Handoff)
    assert row.agent_id == "a1" and row.status == "assigned"

    # Transfer to an agent who is there, who then closes.
    await online(client, A2)
    moved = await client.post(f"{AGENT}/sessions/{SESSION}/transfer", json={"agent_id": "a2"}, headers=A1)
    assert moved.status_code == 200 and moved.json()["data"]["agent_id"] == "a2"
    assert_envelope(await client.post(f"{AGENT}/sessions/{SESSION}/close", headers=A1), 403, "您未接入该会话")
    closed = await client.post(f"{AGENT}/sessions/{SESSION}/close", headers=A2)
    assert closed.status_code == 200 and closed.json()["data"]["status"] == "closed"
    assert await status_of(app) == "active"
    assert_envelope(await client.post(f"{AGENT}/sessions/{SESSION}/close", headers=A2), 409, "该会话已结束")
    # Back to the bot.
    assert "[DONE]" in (await client.post(STREAM, json=chat_body("怎么开发票"))).text
    assert await count(app, Message, Message.role == "assistant") == before + 1

    rating_url = f"/api/v1/chat/session/{SESSION}/rating"
    for score in (0, 6):
        assert_envelope(await client.post(rating_url, json={"score": score}), 400, "评分必须是 1-5 的整数")
    rated = await client.post(rating_url, json={"score": 4, "comment": "挺快的"})
    assert rated.status_code == 200, rated.text
    assert_envelope(await client.post(rating_url, json={"score": 5}), 409, "该会话已评价")
    [row] = await rows(app, Handoff)
    assert (row.rating, row.rating_comment, row.status) == (4, "挺快的", "closed")

    stats = (await client.get(f"{AGENT}/stats", headers=A1)).json()["data"]
    assert stats["handoffs"] == 1 and stats["queue_length"] == 0 and stats["csat_average"] == 4.0
    assert stats["wait_p50_seconds"] is not None and stats["handling_avg_seconds"] is not None
    assert stats["tickets_open"] == 0
    service_stats = (await client.get("/api/v1/chat/stats")).json()["statistics"]["agents"]
    assert service_stats["handoffs"] == 1 and service_stats["csat_average"] == 4.0
    # Every agent action is in the audit log (ids, never the text).
    actions = [(e.action, e.actor) for e in await rows(app, AuditEntry, AuditEntry.target_type == "session")]
    assert ("agent.claim", "a1") in actions and ("agent.transfer", "a1") in actions
    assert ("agent.reply", "a1") in actions and ("agent.note", "a1") in actions
    assert ("agent.close", "a2") in actions
    assert all("客户很着急" not in str(e.detail) for e in await rows(app, AuditEntry))


async def test_two_claims_at_once_exactly_one_wins(claim_app):
    app, client = claim_app
    await online(client, A1)
    await client.post(STREAM, json=chat_body("转人工"))
    first, second = await asyncio.gather(
        client.post(f"{AGENT}/sessions/{SESSION}/claim", headers=A1),
        client.post(f"{AGENT}/sessions/{SESSION}/claim", headers=A2),
    )
    assert sorted([first.status_code, second.status_code]) == [200, 409]
    [row] = await rows(app, Handoff)
    winner = "a1" if first.status_code == 200 else "a2"
    assert row.agent_id == winner and row.status == "assigned"


async def test_auto_assignment_goes_to_the_least_busy_agent(app, client):
    await online(client, A1)
    await client.post(STREAM, json=chat_body("转人工", session_id="s-first"))
    [first] = await rows(app, Handoff)
    assert first.agent_id == "a1" and await status_of(app, "s-first") == "with_agent"
    await online(client, A2)
    answer = answer_text((await client.post(STREAM, json=chat_body("转人工", session_id="s-second"))).text)
    assert "小李" in answer
    async with app.state.services.db.read() as db:
        second = (await db.execute(select(Handoff).where(Handoff.session_id == "s-second"))).scalar_one()
    assert second.agent_id == "a2"
    held = (await client.get(f"{AGENT}/sessions", headers=A2)).json()["data"]["items"]
    assert [item["session_id"] for item in held] == ["s-second"]


async def test_capacity_is_respected(app, client):
    await online(client, A1, max_concurrent=1)
    await client.post(STREAM, json=chat_body("转人工", session_id="s-one"))
    await client.post(STREAM, json=chat_body("转人工", session_id="s-two"))
    statuses = {row.session_id: (row.status, row.agent_id) for row in await rows(app, Handoff)}
    assert statuses == {"s-one": ("assigned", "a1"), "s-two": ("queued", None)}
    # Closing the first frees a seat: the second is assigned.
    await client.post(f"{AGENT}/sessions/s-one/close", headers=A1)
    statuses = {row.session_id: (row.status, row.agent_id) for row in await rows(app, Handoff)}
    assert statuses == {"s-one": ("closed", "a1"), "s-two": ("assigned", "a1")}


async def test_nobody_there_takes_a_message(app, client):
    answer = answer_text((await client.post(STREAM, json=chat_body("转人工"))).text)
    assert "正在为您转接" not in answer  # no promise of a person who does not exist
    assert "联系方式" in answer
    assert await status_of(app) == "ticket"
    assert await count(app, Handoff) == 0
    ack = answer_text((await client.post(STREAM, json=chat_body("我的手机 13812345678，订单没收到"))).text)
    assert ack == "您的留言已收到，我们会尽快与您联系。"
    assert await status_of(app) == "active"
    tickets = (await client.get(f"{AGENT}/tickets", headers=A1)).json()["data"]
    assert tickets["total"] == 1
    stats = (await client.get(f"{AGENT}/stats", headers=A1)).json()["data"]
    assert stats["tickets_open"] == 1


async def test_outside_hours_says_when_people_are_back(start_app):
    # Today and tomorrow are holidays: closed now, whoever is online; back the day after at 09:00.
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    holidays = f"{today},{today + timedelta(days=1)}"
    app, client = await start_app(agent_hours="mon-sun 09:00-10:00", agent_closed_dates=holidays)
    await online(client, A1)
    assert not app.state.services.agents.is_open()
    answer = answer_text((await client.post(STREAM, json=chat_body("转人工"))).text)
    assert "人工客服将于" in answer and "09:00" in answer
    assert await status_of(app) == "ticket"


async def test_two_dislikes_in_a_row_hand_off(claim_app):
    app, client = claim_app
    await online(client, A1)
    for text in ("怎么开发票", "发票抬头写错了可以改吗"):
        await client.post(STREAM, json=chat_body(text))
    answers = await rows(app, Message, Message.role == "assistant")
    await client.post(f"/api/v1/chat/message/{answers[0].id}/feedback", json={"rating": "dislike"})
    assert await count(app, Handoff) == 0
    await client.post(f"/api/v1/chat/message/{answers[1].id}/feedback", json={"rating": "dislike"})
    [row] = await rows(app, Handoff)
    assert row.reason == "dislikes" and row.last_question == "发票抬头写错了可以改吗"
    assert row.sources
    assert await status_of(app) == "waiting_human"


async def test_bad_presence_and_unknown_sessions(client):
    assert_envelope(await client.post(f"{AGENT}/presence", json={"status": "busy"}, headers=A1), 400)
    assert_envelope(
        await client.post(f"{AGENT}/presence", json={"status": "online", "max_concurrent": 0}, headers=A1),
        400,
    )
    assert_envelope(await client.post(f"{AGENT}/sessions/nope/claim", headers=A1), 404, "排队中没有该会话")
    assert_envelope(
        await client.post(f"{AGENT}/sessions/nope/messages", json={"content": "hi"}, headers=A1),
        404,
        "会话不存在",
    )
    assert_envelope(await client.post(f"{AGENT}/sessions/nope/close", headers=A1), 404, "会话不存在")
    me = (await client.get(f"{AGENT}/me", headers=A1)).json()["data"]
    assert me["status"] == "offline" and me["max_concurrent"] == 5


async def test_agent_routes_are_loopback_only_without_auth(app):
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as remote:
        assert_envelope(await remote.get(f"{AGENT}/queue", headers=A1), 403, "仅限客服人员访问")


async def test_heartbeat_timeout_makes_an_agent_away(start_app):
    app, client = await start_app(agent_heartbeat_timeout=0.05)
    await online(client, A1)
    # Presence is "away" once the timeout passes without a sign of life; wait for it, no fixed sleep.
    service = app.state.services.agents
    for _ in range(200):
        listed = await service.agents()
        if listed[0]["status"] == "away":
            break
        await asyncio.sleep(0.02)
    assert listed[0]["status"] == "away"
    answer = answer_text((await client.post(STREAM, json=chat_body("转人工"))).text)
    assert "联系方式" in answer  # an agent who is away is nobody to promise


async def test_agent_keys_in_api_key_mode(start_app):
    app, client = await start_app(
        auth_mode="api_key", api_keys="backend-key-0123456789", agent_keys="agent-key-abcdef:a9:小赵"
    )
    agent = {"Authorization": "Bearer agent-key-abcdef"}
    me = await client.get(f"{AGENT}/me", headers=agent)
    assert (
        me.status_code == 200
        and me.json()["data"]["agent_id"] == "a9"
        and me.json()["data"]["name"] == "小赵"
    )
    backend = {"Authorization": "Bearer backend-key-0123456789"}
    assert_envelope(await client.get(f"{AGENT}/queue", headers=backend), 403, "仅限客服人员访问")
    assert_envelope(
        await client.post(STREAM, json=chat_body("你好"), headers=agent), 403, "客服账号不能以客户身份操作"
    )
    assert await count(app, Message) == 0


async def test_the_openai_door_is_acknowledged_while_an_agent_holds_the_session(claim_app):
    app, client = claim_app
    await online(client, A1)
    await client.post(STREAM, json=chat_body("转人工"))
    await client.post(f"{AGENT}/sessions/{SESSION}/claim", headers=A1)
    body = {
        "model": "c-app",
        "user": "user123",
        "metadata": {"session_id": SESSION},
        "messages": [{"role": "user", "content": "订单号 778899"}],
    }
    answer = await client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "已转交人工客服，客服会尽快回复您"
    [stored] = await rows(app, Message, Message.content == "订单号 778899")
    assert stored.role == "user"
    assert await count(app, Message, Message.role == "assistant") == 1  # only the hand-off answer


async def test_a_stop_whose_message_was_missed_still_ends_the_turn(start_app, standin):
    """The running turn reads the stop flag itself: a flag raised without any bus message ends it."""
    app, client = await start_app(
        llm_api_key="test-key",
        llm_base_url=standin.base_url,
        redis_url="redis://127.0.0.1:6379/0",
        bus_channel_prefix=f"t{uuid.uuid4().hex[:10]}",
        rate_limit_stream="0",
    )
    services = app.state.services
    assert services.bus.distributed
    standin.script.append({"kind": "hang_after", "text": "正在查询", "chunk": 2})

    async def flag_once_running() -> None:
        while not services.chat._running:
            await asyncio.sleep(0.01)
        await services.stops._flag(SESSION)  # stored only: no message on the bus

    flagger = asyncio.create_task(flag_once_running())
    async with asyncio.timeout(20):
        response = await client.post(STREAM, json=chat_body("帮我查订单"))
    await flagger
    assert response.text.endswith("data: [DONE]\n\n")
    [answer] = await rows(app, Message, Message.role == "assistant")
    assert answer.status == "interrupted" and answer.content.startswith("正在查询")


async def test_an_agents_first_requests_at_once(client):
    """The console opens several requests at once for an agent never seen: one row, no 500."""
    answers = await asyncio.gather(*(client.get(f"{AGENT}/me", headers=A1) for _ in range(6)))
    assert [a.status_code for a in answers] == [200] * 6
    listed = (await client.get(f"{AGENT}/agents", headers=A1)).json()["data"]["agents"]
    assert [a["agent_id"] for a in listed] == ["a1"]


async def test_erasing_a_customer_removes_their_hand_offs_and_live_events(start_app):
    app, client = await start_app(agent_assignment="claim", admin_token="admin-token-0123456789")
    await online(client, A1)
    await client.post(STREAM, json=chat_body("转人工"))
    await client.post(f"{AGENT}/sessions/{SESSION}/claim", headers=A1)
    await client.post(f"{AGENT}/sessions/{SESSION}/messages", json={"content": "您的地址是？"}, headers=A1)
    await client.post(
        f"{AGENT}/sessions/{SESSION}/messages", json={"content": "备注", "internal": True}, headers=A1
    )
    assert await count(app, LiveEvent, LiveEvent.session_id == SESSION) > 0
    erased = await client.delete(
        "/api/v1/admin/customers/user123", headers={"Authorization": "Bearer admin-token-0123456789"}
    )
    assert erased.status_code == 200, erased.text
    assert await count(app, Handoff) == 0 and await count(app, HandoffNote) == 0
    assert await count(app, LiveEvent, LiveEvent.session_id == SESSION) == 0
