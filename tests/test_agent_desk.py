"""Tickets (留言) and canned replies (快捷回复) of the agent console: services, routes, bounds, roles."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from c_app.db.models import AuditEntry, CannedReply, Ticket
from c_app.services.canned_service import MAX_PER_OWNER
from c_app.services.ticket_service import TICKET_MAX_CHARS, find_contact

from .utils import assert_envelope, count, rows

TICKETS = "/api/v1/agent/tickets"
CANNED = "/api/v1/agent/canned-replies"
KEYS = {
    "agent_keys": "ka1:a1:小王,ka2:a2:小李,ksup:boss:主管:supervisor",
    "api_keys": "customer-key",
    "auth_mode": "api_key",
}
A1 = {"Authorization": "Bearer ka1"}
A2 = {"Authorization": "Bearer ka2"}
SUP = {"Authorization": "Bearer ksup"}
CUSTOMER = {"Authorization": "Bearer customer-key"}


def test_contact_details_are_found_with_the_privacy_detectors() -> None:
    found = find_contact("电话 138-1234-5678 或 010-12345678，邮箱 Li.Ming@Example.com")
    assert (found.phone, found.email) == ("138-1234-5678", "Li.Ming@Example.com")
    assert find_contact("座机 (0571)8888888").phone == "(0571)8888888"  # no mobile: the landline
    assert find_contact("订单号 20240512000123，无联系方式") == type(found)(None, None)


async def test_record_appends_to_the_sessions_open_ticket(app: Any) -> None:
    tickets = app.state.services.tickets
    first = await tickets.record("u1", "s1", "  快递一直没到  ")
    second = await tickets.record("u1", "s1", "我的手机 13812345678")
    third = await tickets.record("u1", "s1", "改用邮箱 u1@example.com 联系我，手机 13900001111")
    other = await tickets.record("u2", "s2", "")
    assert first.id == second.id == third.id != other.id
    [row] = await rows(app, Ticket, Ticket.user_id == "u1")
    assert (
        row.content == "快递一直没到\n我的手机 13812345678\n改用邮箱 u1@example.com 联系我，手机 13900001111"
    )
    assert (row.phone, row.email, row.status) == ("13900001111", "u1@example.com", "open")  # the latest
    [empty] = await rows(app, Ticket, Ticket.user_id == "u2")
    assert empty.content == "（客户发送了一条没有文字的消息）" and empty.phone is None
    # Once closed, the next message starts a new ticket; so does one that would exceed the size bound.
    await tickets.close(row.id, agent_id="a1")
    again = await tickets.record("u1", "s1", "还在吗")
    assert again.id != row.id
    await tickets.record("u1", "s1", "长" * (TICKET_MAX_CHARS - 3))
    assert await count(app, Ticket, Ticket.user_id == "u1") == 3


async def test_ticket_routes_list_open_first_and_close_once(start_app: Any) -> None:
    app, client = await start_app(**KEYS)
    tickets = app.state.services.tickets
    t1 = await tickets.record("u1", "s1", "第一条留言 13812345678")
    t2 = await tickets.record("u2", "s2", "第二条留言 b@example.com")
    t3 = await tickets.record("u3", "s3", "第三条留言")
    closed = await client.post(f"{TICKETS}/{t2.id}/close", headers=A1)
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert body["success"] is True and body["message"] == "留言已处理"
    assert (body["data"]["status"], body["data"]["closed_by"]) == ("closed", "a1")

    listed = await client.get(TICKETS, headers=A2)
    assert listed.status_code == 200, listed.text
    data = listed.json()["data"]
    assert [item["id"] for item in data["items"]] == [t1.id, t3.id, t2.id]  # open (oldest first), then closed
    assert (data["total"], data["open_count"]) == (3, 2)
    first = data["items"][0]
    assert (first["user_id"], first["session_id"], first["content"], first["phone"], first["email"]) == (
        "u1",
        "s1",
        "第一条留言 13812345678",
        "13812345678",
        None,
    )
    only_open = (await client.get(TICKETS, headers=A2, params={"status": "open", "page_size": 1})).json()
    assert [i["id"] for i in only_open["data"]["items"]] == [t1.id] and only_open["data"]["total"] == 2
    page2 = (
        await client.get(TICKETS, headers=A2, params={"status": "open", "page": 2, "page_size": 1})
    ).json()
    assert [i["id"] for i in page2["data"]["items"]] == [t3.id]

    # Closing twice, an unknown ticket, bad ids and filters: the error envelope, nothing changes.
    assert_envelope(await client.post(f"{TICKETS}/{t2.id}/close", headers=A2), 409, "该留言已处理")
    [row] = await rows(app, Ticket, Ticket.id == t2.id)
    assert row.closed_by == "a1"
    [entry] = await rows(app, AuditEntry, AuditEntry.action == "ticket.close")
    assert (entry.actor, entry.actor_role, entry.target_id, entry.customer_id) == (
        "a1",
        "agent",
        str(t2.id),
        "u2",
    )
    assert_envelope(await client.post(f"{TICKETS}/999999/close", headers=A1), 404, "留言不存在")
    assert_envelope(await client.post(f"{TICKETS}/0/close", headers=A1), 422)
    assert_envelope(await client.post(f"{TICKETS}/abc/close", headers=A1), 422)
    assert_envelope(await client.get(TICKETS, headers=A1, params={"status": "pending"}), 422)
    assert_envelope(await client.get(TICKETS, headers=A1, params={"page_size": 101}), 422)


async def test_two_agents_closing_one_ticket_at_once_one_wins(start_app: Any) -> None:
    app, client = await start_app(**KEYS)
    ticket = await app.state.services.tickets.record("u1", "s1", "留言")
    answers = await asyncio.gather(
        client.post(f"{TICKETS}/{ticket.id}/close", headers=A1),
        client.post(f"{TICKETS}/{ticket.id}/close", headers=A2),
    )
    assert sorted(r.status_code for r in answers) == [200, 409]


async def test_agent_routes_refuse_customers_and_strangers(start_app: Any) -> None:
    _app, client = await start_app(**KEYS)
    for method, path in (("GET", TICKETS), ("POST", f"{TICKETS}/1/close"), ("GET", CANNED), ("POST", CANNED)):
        assert_envelope(
            await client.request(method, path, headers=CUSTOMER, json={}), 403, "仅限客服人员访问"
        )
        assert_envelope(await client.request(method, path, json={}), 401)
        assert_envelope(
            await client.request(method, path, headers={"Authorization": "Bearer no"}, json={}), 401
        )


async def create(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await client.post(CANNED, headers=headers, json=body)


async def test_canned_replies_crud_own_and_shared(start_app: Any) -> None:
    app, client = await start_app(**KEYS)
    made = await create(client, A1, shortcut="thanks", content="  感谢您的耐心等待！ ")
    assert made.status_code == 201, made.text
    mine = made.json()["data"]
    assert (mine["shortcut"], mine["content"], mine["shared"]) == ("thanks", "感谢您的耐心等待！", False)
    shared = await create(client, SUP, shortcut="退货", content="退货请在订单页申请。", shared=True)
    assert shared.status_code == 201, shared.text
    # An agent may keep their own reply under a shared shortcut; the same shortcut twice is refused.
    assert (await create(client, A1, shortcut="退货", content="我的退货说明")).status_code == 201
    assert_envelope(
        await create(client, A1, shortcut="thanks", content="again"), 409, "快捷短语“/thanks”已存在"
    )
    assert_envelope(await create(client, SUP, shortcut="退货", content="x", shared=True), 409)
    assert (await create(client, A2, shortcut="thanks", content="小李的")).status_code == 201  # per owner

    listed = (await client.get(CANNED, headers=A1)).json()["data"]["items"]
    assert [(i["shortcut"], i["shared"]) for i in listed] == [
        ("thanks", False),
        ("退货", False),
        ("退货", True),
    ]
    assert [i["content"] for i in (await client.get(CANNED, headers=A2)).json()["data"]["items"]] == [
        "小李的",
        "退货请在订单页申请。",
    ]

    reply_id = mine["id"]
    patched = await client.patch(f"{CANNED}/{reply_id}", headers=A1, json={"content": "谢谢您！"})
    assert patched.status_code == 200 and patched.json()["data"]["content"] == "谢谢您！"
    renamed = await client.patch(f"{CANNED}/{reply_id}", headers=A1, json={"shortcut": "ty"})
    assert renamed.json()["data"]["shortcut"] == "ty"
    mine_2 = listed[1]["id"]
    assert_envelope(await client.patch(f"{CANNED}/{mine_2}", headers=A1, json={"shortcut": "ty"}), 409)
    # Another agent's reply is not theirs to see or touch; a shared one is the supervisor's.
    assert_envelope(await client.patch(f"{CANNED}/{reply_id}", headers=A2, json={"content": "x"}), 404)
    assert_envelope(await client.delete(f"{CANNED}/{reply_id}", headers=A2), 404)
    shared_id = shared.json()["data"]["id"]
    assert_envelope(
        await client.patch(f"{CANNED}/{shared_id}", headers=A1, json={"content": "x"}),
        403,
        "只有主管可以管理公共快捷回复",
    )
    assert_envelope(await client.delete(f"{CANNED}/{shared_id}", headers=A1), 403)
    assert_envelope(await create(client, A1, shortcut="s", content="x", shared=True), 403)
    [row] = await rows(app, CannedReply, CannedReply.id == shared_id)
    assert row.content == "退货请在订单页申请。"
    assert (
        await client.patch(f"{CANNED}/{shared_id}", headers=SUP, json={"content": "新说明"})
    ).status_code == 200
    deleted = await client.delete(f"{CANNED}/{reply_id}", headers=A1)
    assert deleted.status_code == 200 and deleted.json()["message"] == "快捷回复已删除"
    assert_envelope(await client.delete(f"{CANNED}/{reply_id}", headers=A1), 404, "快捷回复不存在")
    assert await count(app, CannedReply) == 3


@pytest.mark.parametrize(
    "body",
    [
        {"shortcut": "", "content": "x"},
        {"shortcut": "has space", "content": "x"},
        {"shortcut": "a/b", "content": "x"},
        {"shortcut": "x" * 33, "content": "x"},
        {"shortcut": "ok", "content": "   "},
        {"shortcut": "ok", "content": "长" * 2001},
        {"shortcut": "ok", "content": "a\x00b"},
        {"shortcut": "ok"},
        {"shortcut": "ok", "content": "x", "owner_id": "a2"},
        {"shortcut": ["ok"], "content": "x"},
    ],
)
async def test_bad_canned_reply_bodies_are_refused(start_app: Any, body: dict[str, Any]) -> None:
    app, client = await start_app(**KEYS)
    assert_envelope(await client.post(CANNED, headers=A1, json=body), 422)
    assert await count(app, CannedReply) == 0


async def test_canned_reply_patch_bounds_and_unknown_ids(start_app: Any) -> None:
    app, client = await start_app(**KEYS)
    reply_id = (await create(client, A1, shortcut="hi", content="您好")).json()["data"]["id"]
    assert_envelope(await client.patch(f"{CANNED}/{reply_id}", headers=A1, json={}), 422)
    assert_envelope(await client.patch(f"{CANNED}/{reply_id}", headers=A1, json={"shortcut": "a b"}), 422)
    assert_envelope(await client.patch(f"{CANNED}/999", headers=A1, json={"content": "x"}), 404)
    assert_envelope(await client.patch(f"{CANNED}/-1", headers=A1, json={"content": "x"}), 422)
    [row] = await rows(app, CannedReply)
    assert (row.shortcut, row.content) == ("hi", "您好")


async def test_canned_replies_per_owner_are_bounded(start_app: Any) -> None:
    app, client = await start_app(**KEYS)
    async with app.state.services.db.transaction() as db:
        db.add_all(CannedReply(owner_id="a1", shortcut=f"s{i}", content="x") for i in range(MAX_PER_OWNER))
    assert_envelope(
        await create(client, A1, shortcut="one-more", content="x"), 400, "快捷回复数量已达上限（200 条）"
    )
    assert (await create(client, A2, shortcut="one-more", content="x")).status_code == 201


async def test_development_mode_agents_from_loopback(app_client: Any) -> None:
    _app, client = app_client  # AUTH_MODE=none: the loopback caller is a (supervisor) agent
    made = await client.post(CANNED, headers={"X-Agent-Id": "dev1"}, json={"shortcut": "a", "content": "b"})
    assert made.status_code == 201, made.text
    assert (await client.get(TICKETS)).json()["data"]["items"] == []
