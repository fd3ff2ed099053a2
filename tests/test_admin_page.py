"""The operator console at /admin, end to end in headless Chromium against a real server on loopback.

Debian's `chromium` package driven by Playwright, launched as in test_chat_page.py. The browser tests
run on SQLite only; the refusal test (the shell holds no data, every JSON route the page calls wants
the token) runs with httpx on every backend.
"""

from __future__ import annotations

import json
import os
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

ADMIN = "admin-console-token-7f3a"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "admin-console.png"
WRITE_SCREENSHOT = os.environ.get("C_APP_SCREENSHOT") == "1"

browser_only = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
    pytest.mark.skipif(
        os.environ.get("C_APP_TEST_DB", "sqlite") != "sqlite", reason="browser test runs on SQLite only"
    ),
]


def browser_test(func: Callable[..., Any]) -> Callable[..., Any]:
    for mark in browser_only:
        func = mark(func)
    return func


IMPORT_JSONL = "\n".join(
    [
        json.dumps(
            {
                "external_id": "console-1",
                "title": "会员积分有效期",
                "category": "会员",
                "question": "会员积分多久会过期？",
                "similar_questions": ["积分什么时候清零"],
                "answer": "会员积分自获得之日起 **12 个月**内有效。",
            },
            ensure_ascii=False,
        ),
        json.dumps(
            {
                "external_id": "console-2",
                "title": "礼品卡使用",
                "category": "会员",
                "question": "礼品卡可以和优惠券一起用吗？",
                "answer": "礼品卡可以与优惠券叠加使用。",
            },
            ensure_ascii=False,
        ),
        '{"external_id": "console-bad", "question": "没有答案的一行"}',
    ]
)
EDITED_ANSWER = "会员积分自获得之日起 **24 个月**内有效，到期前 7 天短信提醒。"
GAP_QUESTION = "你们的门店可以停放房车吗"


def stored(db_path: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(query, params).fetchall()


def seed_history(db_path: str) -> None:
    """Past days' answers with outcomes and ratings (for the screenshot only), stored as the app stores them."""
    import random
    from datetime import UTC, datetime, timedelta

    rng = random.Random(15)
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = []
    for day in range(1, 14):
        when = (now - timedelta(days=day)).replace(hour=10)
        for n in range(rng.randint(18, 40)):
            outcome = rng.choices(
                ["answered", "clarified", "no_match", "handoff", "smalltalk"], weights=[64, 14, 10, 6, 6]
            )[0]
            rating = rng.choices([None, "like", "dislike"], weights=[70, 24, 6])[0]
            at = (when + timedelta(minutes=7 * n)).strftime("%Y-%m-%d %H:%M:%S.%f")
            rows.append(
                (
                    "s_history",
                    "history_user",
                    "assistant",
                    "……",
                    "complete",
                    "knowledge_base",
                    outcome,
                    at,
                    rating,
                    at if rating else None,
                )
            )
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO chat_sessions (id, user_id, title, description, status, metadata, message_count, created_at, last_activity_at)"
            " VALUES ('s_history', 'history_user', '历史会话', '', 'active', '{}', ?, ?, ?)",
            (len(rows), rows[-1][7], rows[0][7]),
        )
        conn.executemany(
            "INSERT INTO messages (session_id, user_id, role, content, status, engine, outcome, created_at, feedback, feedback_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def ask(base_url: str, user: str, question: str) -> str:
    """One customer turn through /api/v1/chat/stream (plain framing); the answer's text."""
    body = {"user_id": user, "session_id": f"s_{user}", "message": {"role": "user", "content": question}}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        response = client.post("/api/v1/chat/stream", json=body)
    assert response.status_code == 200, response.text
    pieces = []
    for line in response.text.split("\n"):
        if line.startswith("data: ") and line[6:] != "[DONE]":
            pieces.append(line[6:].replace("\\n", "\n"))
    return "".join(pieces)


@pytest.fixture
def server(make_settings: Callable[..., Settings]) -> Iterator[tuple[str, str]]:
    settings = make_settings(admin_token=ADMIN)
    with serve(create_app(settings)) as base_url:
        yield base_url, settings.memory_db_path


@pytest.fixture
def page() -> Iterator[Any]:
    with browser() as launched:
        yield new_tab(launched, width=1280, height=820, accept_downloads=True)


def open_console(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/admin")
    page.wait_for_selector("body[data-ready='true']", state="attached")


def log_in(page: Any, value: str) -> None:
    page.fill("#login-token", value)
    page.click("#login-submit")


def kb_total(page: Any) -> int:
    return int(page.locator("#kb-total").get_attribute("data-total") or -1)


@browser_test
def test_admin_console_end_to_end(server: tuple[str, str], page: Any) -> None:
    from playwright.sync_api import expect

    base_url, db_path = server
    open_console(page, base_url)

    # A wrong token stays on the login form with a message; the right one opens the console.
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#console")).to_be_hidden()
    log_in(page, "not-the-token")
    expect(page.locator("#login-error")).to_contain_text("管理员令牌无效")
    expect(page.locator("#console")).to_be_hidden()
    log_in(page, ADMIN)
    expect(page.locator("#console")).to_be_visible()
    expect(page.locator("#kb-rows tr")).to_have_count(20)
    assert page.evaluate("sessionStorage.getItem('c_app.admin_token')") == ADMIN
    assert ADMIN not in page.url
    before = kb_total(page)
    assert before == 80  # the bundled sample knowledge base

    # Import a small JSON Lines file: a progress bar, a report with the bad line, and a new count.
    page.set_input_files(
        "#import-file",
        files=[{"name": "faq.jsonl", "mimeType": "application/x-ndjson", "buffer": IMPORT_JSONL.encode()}],
    )
    page.click("#import-submit")
    expect(page.locator("#import-status")).to_contain_text("新增 2 条")
    expect(page.locator("#import-status")).to_contain_text("失败 1 条")
    expect(page.locator("#import-errors li")).to_have_count(1)
    expect(page.locator("#import-errors li")).to_contain_text("第 3 行")
    assert page.locator("#import-progress").evaluate("p => p.value") == 100
    expect(page.locator("#kb-total")).to_have_text(str(before + 2))

    # Paging and the category filter.
    page.locator("#kb-pager").get_by_role("button", name="下一页").click()
    expect(page.locator("#kb-pager")).to_contain_text("第 2 / 5 页")
    expect(page.locator("#kb-rows tr").first).to_have_attribute("data-id", "21")
    page.fill("#kb-category", "会员")
    page.click("#kb-filter button[type=submit]")
    expect(page.locator("#kb-total")).to_have_text("2")
    expect(page.locator("#kb-pager")).to_contain_text("第 1 / 1 页")
    page.fill("#kb-category", "")

    # Search, edit the answer with a live preview, save; the next customer gets the new text.
    page.fill("#kb-q", "会员积分")
    page.click("#kb-filter button[type=submit]")
    expect(page.locator("#kb-total")).to_have_text("1")
    page.locator("#kb-rows tr").first.get_by_role("button", name="编辑").click()
    expect(page.locator("#editor")).to_be_visible()
    expect(page.locator("#ed-question")).to_have_value("会员积分多久会过期？")
    expect(page.locator("#ed-similar")).to_have_value("积分什么时候清零")
    page.fill("#ed-answer", EDITED_ANSWER + '\n<img src=x onerror="window.__pwned=1">')
    expect(page.locator("#ed-preview strong")).to_have_text("24 个月")
    expect(page.locator("#ed-preview")).to_contain_text("<img src=x")  # text, not an element
    assert page.locator("#ed-preview img").count() == 0
    page.fill("#ed-answer", EDITED_ANSWER)
    page.click("#editor-save")
    expect(page.locator("#editor")).to_be_hidden()
    assert "24 个月" in ask(base_url, "customer_a", "会员积分多久会过期？")

    # Hit-testing: ranked entries with scores, and whether the responder would answer.
    # (Not its similar question 积分什么时候清零: the sample entry kb-member-004 has it too, with
    # another answer, and two answers matching equally are a clarify, issue 11.)
    page.fill("#hit-query", "会员积分多久会过期？")
    page.click("#hit-form button[type=submit]")
    expect(page.locator("#hit-result .verdict")).to_have_attribute("data-answered", "true")
    expect(page.locator("#hit-result tbody tr").first).to_contain_text("会员积分多久会过期？")

    # Delete asks first; cancelling keeps the entry, confirming removes it.
    page.fill("#kb-q", "礼品卡")
    page.click("#kb-filter button[type=submit]")
    expect(page.locator("#kb-total")).to_have_text("1")
    page.locator("#kb-rows tr").first.get_by_role("button", name="删除").click()
    expect(page.locator("#confirm")).to_be_visible()
    page.locator("#confirm").get_by_role("button", name="取消").click()
    expect(page.locator("#kb-total")).to_have_text("1")
    page.locator("#kb-rows tr").first.get_by_role("button", name="删除").click()
    page.click("#confirm-ok")
    expect(page.locator("#kb-total")).to_have_text("0")

    # Export downloads the knowledge base with the bearer header (fetch + blob).
    page.fill("#kb-q", "")
    page.click("#kb-filter button[type=submit]")
    with page.expect_download() as download:
        page.click("#kb-export-jsonl")
    exported = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
    assert len(exported) == before + 1
    assert any("24 个月" in line for line in exported)

    # A question the knowledge base cannot answer becomes a gap; resolving it answers the next customer.
    first = ask(base_url, "customer_b", GAP_QUESTION)
    (outcome,) = stored(
        db_path, "SELECT outcome FROM messages WHERE role = 'assistant' ORDER BY id DESC LIMIT 1"
    )[0]
    assert outcome in ("no_match", "clarified"), outcome
    page.get_by_role("tab", name="知识缺口").click()
    gap = page.locator(f".gap[data-question='{GAP_QUESTION}']")
    expect(gap).to_be_visible()
    expect(gap.locator(".badge").first).to_be_visible()
    suggestion = gap.locator(".suggestion").first
    entry_id = int(suggestion.get_attribute("data-entry-id"))
    suggestion.get_by_role("button", name="添加为相似问题").click()
    expect(page.locator(f".gap[data-question='{GAP_QUESTION}']")).to_have_count(0)
    ((similar, answer),) = stored(
        db_path, "SELECT similar_questions, content FROM memories WHERE id = ?", entry_id
    )
    assert GAP_QUESTION in json.loads(similar)
    second = ask(base_url, "customer_c", GAP_QUESTION)
    assert second != first
    assert answer[:12] in second

    # "新建条目" on a gap opens the editor with the question filled in.
    ask(base_url, "customer_d", "可以用外币现金付款吗")
    page.get_by_role("button", name="刷新").first.click()
    other = page.locator(".gap[data-question='可以用外币现金付款吗']")
    other.get_by_role("button", name="新建条目").click()
    expect(page.locator("#ed-question")).to_have_value("可以用外币现金付款吗")
    page.fill("#ed-answer", "目前仅支持人民币付款。")
    page.click("#editor-save")
    expect(page.locator(".gap[data-question='可以用外币现金付款吗']")).to_have_count(0)
    assert "仅支持人民币" in ask(base_url, "customer_e", "可以用外币现金付款吗")

    # Figures: one point per requested day in each daily chart, drawn by uPlot.
    ((first_answer,),) = stored(
        db_path, "SELECT id FROM messages WHERE role = 'assistant' ORDER BY id LIMIT 1"
    )
    with httpx.Client(base_url=base_url) as client:
        client.post(
            f"/api/v1/chat/message/{first_answer}/feedback",
            json={"rating": "like"},
            params={"user_id": "customer_a"},
        ).raise_for_status()
    page.get_by_role("tab", name="数据统计").click()
    for chart in ("#chart-turns", "#chart-outcomes", "#chart-feedback"):
        expect(page.locator(chart)).to_have_attribute("data-points", "14")
        expect(page.locator(f"{chart} canvas")).to_have_count(1)
    # data-points is read back from the uPlot instance; its legend names the series.
    expect(page.locator("#chart-feedback .u-legend")).to_contain_text("有帮助")
    page.select_option("#fig-days", "7")
    expect(page.locator("#chart-turns")).to_have_attribute("data-points", "7")
    expect(page.locator("#chart-outcomes")).to_have_attribute("data-points", "7")
    expect(page.locator("#top-questions .hbar").first).to_be_visible()
    expect(page.locator("#top-entries .hbar").first).to_be_visible()
    page.select_option("#fig-days", "14")
    expect(page.locator("#chart-turns")).to_have_attribute("data-points", "14")

    # Conversations: search by customer, open one read-only with its sources and outcome.
    page.get_by_role("tab", name="会话记录").click()
    page.fill("#conv-user", "customer_a")
    page.click("#conv-filter button[type=submit]")
    expect(page.locator("#conv-total")).to_have_text("1")
    page.locator("#conv-rows tr").first.click()
    expect(page.locator("#conv-detail")).to_be_visible()
    answer_bubble = page.locator("#conv-messages .msg.assistant").first
    expect(answer_bubble.locator(".md strong")).to_have_text("24 个月")
    expect(answer_bubble.locator(".badge")).to_have_text("已回答")
    expect(answer_bubble.locator(".sources summary")).to_contain_text("参考来源")
    page.click("#conv-back")
    expect(page.locator("#conv-browser")).to_be_visible()

    if WRITE_SCREENSHOT:
        seed_history(db_path)  # two weeks of made-up turns, so the README's picture has something to show
        page.evaluate("document.getElementById('toast').hidden = true")
        page.get_by_role("tab", name="数据统计").click()
        expect(page.locator("#chart-turns canvas")).to_have_count(1)
        page.wait_for_timeout(300)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert SCREENSHOT.stat().st_size < 400_000

    # A token that stops working sends the operator back to the login form with a message.
    page.evaluate("sessionStorage.setItem('c_app.admin_token', 'revoked')")
    page.get_by_role("tab", name="知识库").click()
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#login-error")).to_contain_text("令牌无效")
    assert page.evaluate("sessionStorage.getItem('c_app.admin_token')") is None

    assert page.errors == []  # type: ignore[attr-defined]
    assert page.evaluate("window.__violations") == []
    assert page.evaluate("typeof window.__pwned") == "undefined"


@browser_test
def test_admin_console_on_a_tablet(server: tuple[str, str], page: Any) -> None:
    from playwright.sync_api import expect

    base_url, _ = server
    page.set_viewport_size({"width": 768, "height": 1024})
    open_console(page, base_url)
    log_in(page, ADMIN)
    expect(page.locator("#kb-rows tr")).to_have_count(20)
    fits(page, "#kb-filter", "#kb-table", "#import-form", "#hit-form")
    page.locator("#kb-rows tr").first.get_by_role("button", name="编辑").click()
    fits(page, "#ed-answer", "#ed-preview", "#editor-save")
    page.click("#editor-cancel")
    page.get_by_role("tab", name="数据统计").click()
    expect(page.locator("#chart-turns")).to_have_attribute("data-points", "14")
    fits(page, "#chart-turns", "#chart-outcomes", "#chart-feedback", "#top-questions")
    page.get_by_role("tab", name="会话记录").click()
    fits(page, "#conv-filter")
    assert page.errors == []  # type: ignore[attr-defined]


def fits(page: Any, *selectors: str) -> None:
    """Each element is shown within the viewport's width, and nothing scrolls sideways."""
    from playwright.sync_api import expect

    width = page.viewport_size["width"]
    for selector in selectors:
        expect(page.locator(selector)).to_be_visible()  # a dialog opens after its entry is fetched
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (selector, box)
    assert page.evaluate("document.documentElement.scrollWidth") <= width


# Every JSON route the console calls, as the page calls it.
CONSOLE_ROUTES = [
    ("GET", "/api/v1/admin/knowledge?page=1&page_size=20", None),
    ("GET", "/api/v1/admin/knowledge/1", None),
    ("PUT", "/api/v1/admin/knowledge/1", {"answer": "篡改"}),
    ("DELETE", "/api/v1/admin/knowledge/1", None),
    ("POST", "/api/v1/admin/knowledge", {"question": "q", "answer": "a"}),
    ("GET", "/api/v1/admin/knowledge/export?format=jsonl", None),
    ("POST", "/api/v1/admin/knowledge/hit-test", {"query": "怎么退货", "limit": 10}),
    ("GET", "/api/v1/admin/stats/turns?days=14", None),
    ("GET", "/api/v1/admin/stats/outcomes?days=14", None),
    ("GET", "/api/v1/admin/stats/feedback?days=14", None),
    ("GET", "/api/v1/admin/stats/top-questions?days=14&limit=10", None),
    ("GET", "/api/v1/admin/stats/top-entries?days=14&limit=10", None),
    ("GET", "/api/v1/admin/gaps?kind=all&days=30&page=1&page_size=20", None),
    ("POST", "/api/v1/admin/gaps/resolve", {"question": "q", "entry_id": 1}),
    ("GET", "/api/v1/admin/conversations?page=1&page_size=20", None),
    ("GET", "/api/v1/admin/conversations/s_secret", None),
]


def test_console_refuses_without_the_token(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(admin_token=ADMIN)
    with serve(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        client.post(
            "/api/v1/chat/stream",
            json={
                "user_id": "secret_user",
                "session_id": "s_secret",
                "message": {"role": "user", "content": "怎么退货"},
            },
        ).raise_for_status()
        assert (
            client.get("/api/v1/admin/knowledge", headers={"Authorization": f"Bearer {ADMIN}"}).status_code
            == 200
        )

        for headers in ({}, {"Authorization": "Bearer wrong"}):
            for method, path, body in CONSOLE_ROUTES:
                response = client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, response.status_code)
                assert "secret_user" not in response.text and "退货" not in response.text
            upload = client.post(
                "/api/v1/admin/knowledge/import",
                files={"file": ("faq.jsonl", IMPORT_JSONL.encode(), "application/x-ndjson")},
                headers=headers,
            )
            assert upload.status_code == 401

        # The shell and its assets are the same for everyone and carry no data.
        shell = client.get("/admin")
        assert shell.status_code == 200
        assert shell.headers["content-type"].startswith("text/html")
        csp = shell.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "connect-src 'self'" in csp
        texts = [shell.text]
        for asset in (
            "admin.js",
            "admin-core.js",
            "dom.js",
            "admin-kb.js",
            "admin-gaps.js",
            "admin-charts.js",
            "admin-conversations.js",
            "admin.css",
            "markdown.js",
            "vendor/uplot/uPlot.iife.min.js",
        ):
            response = client.get(f"/admin/assets/{asset}")
            assert response.status_code == 200, asset
            texts.append(response.text)
        for text in texts:
            assert ADMIN not in text
            assert "secret_user" not in text and "s_secret" not in text
            assert "买的东西不想要了怎么退货" not in text  # no knowledge-base entry
        # Nothing was changed by the refused calls.
        entry = client.get("/api/v1/admin/knowledge/1", headers={"Authorization": f"Bearer {ADMIN}"})
        assert entry.status_code == 200 and entry.json()["data"]["answer"] != "篡改"
