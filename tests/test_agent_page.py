"""The agent console at /agent and the chat page's agent side, end to end in headless Chromium with
two browser contexts at once. While the agent is offline a customer asking for a person is offered
the ticket form and leaves a message, which the agent sees (with the phone number) and closes. Then,
the agent online: the customer asks for a person again, the agent claims the conversation
(AGENT_ASSIGNMENT=claim), they write both ways (a canned reply, an internal note the customer never
sees), the agent closes and the customer rates. SQLite only, as the other page tests.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from c_app.config import Settings
from c_app.main import create_app

from .browser import CHROMIUM, browser, new_tab
from .servers import serve

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "agent-console.png"
WRITE_SCREENSHOT = os.environ.get("C_APP_SCREENSHOT") == "1"
CUSTOMER_KEY = "customer-page-key"
AGENT_KEY = "agent-page-key"

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
    pytest.mark.skipif(
        os.environ.get("C_APP_TEST_DB", "sqlite") != "sqlite", reason="browser test runs on SQLite only"
    ),
]


def stored(db_path: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(query, params).fetchall()


@pytest.fixture
def server(make_settings: Callable[..., Settings]) -> Iterator[tuple[str, str]]:
    settings = make_settings(
        auth_mode="api_key",
        api_keys=CUSTOMER_KEY,
        agent_keys=f"{AGENT_KEY}:a1:小王",
        agent_assignment="claim",
    )
    with serve(create_app(settings)) as base_url:
        yield base_url, settings.memory_db_path


def test_customer_and_agent_talk_live_and_the_customer_rates(server: tuple[str, str]) -> None:
    from playwright.sync_api import expect

    base_url, db_path = server
    with browser() as launched:
        agent = new_tab(launched, width=1360, height=820)
        customer = new_tab(launched, width=900, height=760)

        # The console is served with its own strict policy and asks for a token first.
        page = httpx.get(f"{base_url}/agent")
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
        remembered = httpx.post(
            f"{base_url}/api/v1/chat/memory/add",
            json={"user_id": "pw_customer", "content": "偏好顺丰快递，工作日白天不在家"},
            headers={"Authorization": f"Bearer {CUSTOMER_KEY}"},
        )
        assert remembered.status_code == 200, remembered.text
        agent.goto(f"{base_url}/agent")
        expect(agent.locator("#login")).to_be_visible()
        agent.fill("#token", "not-a-key")
        agent.click("#login-submit")
        expect(agent.locator("#login-error")).to_be_visible()
        agent.fill("#token", AGENT_KEY)
        agent.click("#login-submit")
        agent.wait_for_selector("body[data-ready='true']", state="attached")
        expect(agent.locator("#me")).to_contain_text("小王")
        assert AGENT_KEY not in agent.url
        expect(agent.locator("#presence")).to_have_value("offline")

        # Nobody online: the customer is offered the ticket form and leaves a message with a phone number.
        customer.goto(f"{base_url}/chat?user=pw_customer#token={CUSTOMER_KEY}")
        customer.wait_for_selector("body[data-ready='true']", state="attached")
        assert CUSTOMER_KEY not in customer.url
        customer.fill("#input", "我要转人工")
        customer.press("#input", "Enter")
        expect(customer.locator(".ticket-form")).to_be_visible()
        expect(customer.locator("#input")).to_have_attribute("placeholder", re.compile("联系方式"))
        customer.fill("#input", "订单一直没发货，请回电 13812345678")
        customer.press("#input", "Enter")
        expect(customer.locator(".ticket-ack")).to_contain_text("留言已提交")
        assert stored(db_path, "SELECT user_id, phone, status FROM tickets") == [
            ("pw_customer", "13812345678", "open")
        ]
        agent.click("#tab-tickets")
        ticket = agent.locator("#tickets .ticket")
        expect(ticket).to_have_count(1)
        expect(ticket.first.locator(".contact")).to_contain_text("电话 13812345678")
        expect(ticket.first).to_contain_text("订单一直没发货")
        ticket.first.locator(".ticket-close").click()
        expect(ticket.first).to_contain_text("已处理（a1）")
        assert stored(db_path, "SELECT status, closed_by FROM tickets") == [("closed", "a1")]
        agent.click("#tab-queue")

        agent.select_option("#presence", "online")
        expect(agent.locator("#stats")).to_contain_text("在线客服 1")
        # A canned reply, saved from the console.
        agent.fill("#canned-shortcut", "thanks")
        agent.fill("#canned-content", "感谢您的耐心等待，马上为您查询！")
        agent.click("#canned-form button[type='submit']")
        expect(agent.locator("#canned-list")).to_contain_text("/thanks")

        # The customer asks again; the agent's queue shows them without a reload.
        customer.fill("#input", "我要转人工")
        customer.press("#input", "Enter")
        expect(customer.locator(".live-notice").first).to_contain_text("您正在排队")
        customer.wait_for_selector("body[data-live='true']", state="attached")
        queued = agent.locator("#queue .item")
        expect(queued).to_have_count(1)
        expect(queued.first).to_contain_text("pw_customer")
        expect(queued.first.locator(".wait")).to_contain_text("等待")

        # The agent opens it (history and context beside it) and claims it.
        queued.first.click()
        expect(agent.locator("#conv-messages .msg.user").last).to_contain_text("我要转人工")
        expect(agent.locator("#ctx-question")).to_have_text("我要转人工")
        expect(agent.locator("#ctx-memories")).to_contain_text("偏好顺丰快递")
        agent.click("#claim")
        expect(agent.locator("#reply-form")).to_be_visible()
        expect(agent.locator("#mine .item")).to_have_count(1)
        expect(customer.locator(".live-notice").last).to_contain_text("人工客服 小王 已接入")

        # Agent -> customer, typed with the "/" shortcut of the canned reply.
        agent.click("#reply")
        agent.keyboard.type("/tha")
        expect(agent.locator("#canned-suggest")).to_be_visible()
        expect(customer.locator("#agent-typing")).to_contain_text("客服 小王 正在输入")
        agent.keyboard.press("Enter")  # picks the suggestion
        expect(agent.locator("#reply")).to_have_value("感谢您的耐心等待，马上为您查询！")
        agent.keyboard.press("Enter")  # sends
        reply = customer.locator(".msg.agent").last
        expect(reply).to_contain_text("感谢您的耐心等待，马上为您查询！")
        expect(reply.locator(".agent-name")).to_contain_text("小王")

        # Customer -> agent: typing shows, then the message arrives live; the bot stays silent.
        answers = customer.locator(".msg.assistant").count()
        customer.fill("#input", "")
        customer.type("#input", "我的快递三天没到")
        expect(agent.locator("#customer-typing")).to_be_visible()
        customer.press("#input", "Enter")
        expect(agent.locator("#conv-messages .msg.user").last).to_contain_text("我的快递三天没到")
        expect(customer.locator(".msg.user").last).to_contain_text("我的快递三天没到")
        expect(customer.locator(".msg.assistant")).to_have_count(answers)  # no bot answer, no acknowledgement
        expect(agent.locator("#conv-messages .msg.agent .read")).to_have_count(1)  # read receipt

        # An internal note stays on the agent's side.
        agent.check("#internal")
        agent.fill("#reply", "客户较着急，优先处理")
        agent.press("#reply", "Enter")
        expect(agent.locator("#conv-messages .msg.note")).to_contain_text("客户较着急")
        agent.fill("#reply", "已为您催促快递，今天会送达。")
        agent.press("#reply", "Enter")
        expect(customer.locator(".msg.agent").last).to_contain_text("今天会送达")
        expect(customer.locator("#messages")).not_to_contain_text("客户较着急")
        if WRITE_SCREENSHOT:
            agent.screenshot(path=str(SCREENSHOT))

        # The agent closes; the customer rates 4 with a comment, and the rating is stored.
        agent.click("#close-session")
        expect(agent.locator("#conv-state")).to_have_text("已结束")
        rating = customer.locator(".rating")
        expect(rating).to_be_visible()
        rating.get_by_role("button", name="4 分").click()
        rating.locator(".rating-comment").fill("回复很及时")
        rating.locator(".rating-submit").click()
        expect(customer.locator(".rating-done")).to_contain_text("4 分")
        expect(agent.locator("#status")).to_contain_text("客户评价：4 分")

        assert stored(
            db_path,
            "SELECT agent_id, status, rating, rating_comment FROM handoffs WHERE agent_id IS NOT NULL",
        ) == [("a1", "closed", 4, "回复很及时")]
        roles = stored(
            db_path, "SELECT role, agent_name, content FROM messages WHERE role = 'agent' ORDER BY id"
        )
        assert roles == [
            ("agent", "小王", "感谢您的耐心等待，马上为您查询！"),
            ("agent", "小王", "已为您催促快递，今天会送达。"),
        ]
        assert stored(db_path, "SELECT content FROM handoff_notes") == [("客户较着急，优先处理",)]
        # After a reload the customer's history shows the agent's messages as the agent's.
        customer.reload()
        customer.wait_for_selector("body[data-ready='true']", state="attached")
        expect(customer.locator(".msg.agent")).to_have_count(2)
        expect(customer.locator(".msg.agent").first).to_contain_text("感谢您的耐心等待")
        expect(customer.locator(".msg.agent .agent-name").first).to_have_text("人工客服 小王")
        for tab in (agent, customer):
            assert tab.errors == []
            assert tab.evaluate("window.__violations") == []
    if WRITE_SCREENSHOT:
        assert SCREENSHOT.stat().st_size < 400_000
