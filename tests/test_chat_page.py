"""The chat page at /chat, end to end in headless Chromium against a real server on loopback.

Debian's `chromium` package driven by Playwright (never Playwright's own browser download). SQLite
only: the page exercises the same API the other tests run on both backends, and a browser is slow.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from c_app.config import Settings
from c_app.main import create_app

from .browser import CHROMIUM, TIMEOUT_MS, browser, new_tab
from .llm_standin import StandIn
from .servers import serve
from .utils import png_bytes

# The README's picture: refreshed only when asked (C_APP_SCREENSHOT=1), so a test run leaves the tree clean.
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "chat-page.png"
WRITE_SCREENSHOT = os.environ.get("C_APP_SCREENSHOT") == "1"

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
    pytest.mark.skipif(
        os.environ.get("C_APP_TEST_DB", "sqlite") != "sqlite", reason="browser test runs on SQLite only"
    ),
]

HOSTILE_QUESTION = "页面安全渲染测试题"
HOSTILE_ANSWER = (
    '**提示**：<script>window.__pwned = 1</script> 与 <img src=x onerror="window.__pwned = 2"> 只是文字。\n'
    "- 链接 [点我](javascript:window.__pwned=3) 不可点击\n"
    "- 官网 [帮助中心](https://example.com/help) 可以点击"
)


def stored(db_path: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(query, params).fetchall()


async def add_hostile_entry(settings: Settings) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.services.knowledge.upsert(
            [
                {
                    "external_id": "test-hostile",
                    "title": "安全渲染",
                    "question": HOSTILE_QUESTION,
                    "answer": HOSTILE_ANSWER,
                }
            ]
        )


@pytest.fixture
def server(make_settings: Callable[..., Settings]) -> Iterator[tuple[str, str]]:
    settings = make_settings()
    asyncio.run(add_hostile_entry(settings))
    with serve(create_app(settings)) as base_url:
        yield base_url, settings.memory_db_path


@pytest.fixture
def page() -> Iterator[Any]:
    with browser() as launched:
        yield new_tab(launched, width=1100, height=760)


def ask(page: Any, question: str) -> Any:
    """Type a question, send it with Enter, and wait until its answer has finished streaming."""
    answers = page.locator(".msg.assistant")
    before = answers.count()
    page.fill("#input", question)
    page.press("#input", "Enter")
    answer = answers.nth(before)
    # Feedback buttons appear once the answer is stored, i.e. when the stream has ended.
    answer.locator(".feedback").wait_for()
    return answer


def open_page(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/chat?user=pw_user")
    page.wait_for_selector("body[data-ready='true']", state="attached")


def test_chat_page_end_to_end(server: tuple[str, str], page: Any) -> None:
    from playwright.sync_api import expect

    base_url, db_path = server
    open_page(page, base_url)
    expect(page.locator("#welcome")).to_be_visible()

    # A question gets its answer from the sample knowledge base, streamed and rendered as Markdown.
    answer = ask(page, "买东西怎么开发票？")
    expect(answer.locator(".md")).to_contain_text("电子发票开具后会发送至您的邮箱")
    expect(answer.locator(".md strong")).to_have_text("增值税电子普通发票")
    expect(answer.locator(".md ol > li")).to_have_count(2)
    expect(answer.locator(".sources summary")).to_contain_text("参考来源")
    expect(page.locator(".session.active .session-title")).to_have_text("买东西怎么开发票？")

    # 👍 is stored on that answer.
    answer.get_by_role("button", name="有帮助").click()
    expect(answer.get_by_role("button", name="有帮助")).to_have_attribute("aria-pressed", "true")
    answer_id = int(answer.locator(".feedback").get_attribute("data-message-id"))
    assert stored(db_path, "SELECT role, feedback FROM messages WHERE id = ?", answer_id) == [
        ("assistant", "like")
    ]

    # An image attaches: a thumbnail before sending, and an image_url part in the stored message.
    page.set_input_files(
        "#file",
        files=[{"name": "photo.png", "mimeType": "image/png", "buffer": png_bytes((64, 48), (250, 173, 20))}],
    )
    expect(page.locator(".attachments img.thumb")).to_have_count(1)
    ask(page, "这张图片里的订单能开发票吗？")
    expect(page.locator(".attachments img.thumb")).to_have_count(0)
    thumb = page.locator(".msg.user").last.locator("img.thumb")
    expect(thumb).to_be_visible()
    src = thumb.get_attribute("src")
    assert src and src.startswith("/static/uploads/")
    assert page.evaluate("(img) => img.naturalWidth", thumb.element_handle()) == 64
    ((parts,),) = stored(db_path, "SELECT parts FROM messages WHERE role = 'user' ORDER BY id DESC LIMIT 1")
    assert json.loads(parts) == [
        {"type": "text", "text": "这张图片里的订单能开发票吗？"},
        {"type": "image_url", "image_url": {"url": src}},
    ]
    shot = page.screenshot(path=str(SCREENSHOT) if WRITE_SCREENSHOT else None)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"

    # An answer carrying markup shows it as text; nothing in it runs or becomes an element.
    hostile = ask(page, HOSTILE_QUESTION)
    check_inert(page, hostile)

    # After a reload the history is back: questions, answers, the thumbnail, the 👍 and the inert text.
    page.reload()
    page.wait_for_selector("body[data-ready='true']", state="attached")
    expect(page.locator(".msg.user")).to_have_count(3)
    expect(page.locator(".msg.assistant")).to_have_count(3)
    first = page.locator(".msg.assistant").first
    expect(first.locator(".md strong")).to_have_text("增值税电子普通发票")
    expect(first.get_by_role("button", name="有帮助")).to_have_attribute("aria-pressed", "true")
    expect(page.locator(".msg.user img.thumb")).to_have_attribute("src", src)
    check_inert(page, page.locator(".msg.assistant").last)
    assert page.errors == []  # type: ignore[attr-defined]

    assert SCREENSHOT.stat().st_size < 300_000


def check_inert(page: Any, answer: Any) -> None:
    from playwright.sync_api import expect

    body = answer.locator(".md")
    expect(body).to_contain_text("<script>window.__pwned = 1</script>")
    expect(body).to_contain_text('<img src=x onerror="window.__pwned = 2">')
    expect(body.locator("strong")).to_have_text("提示")
    assert body.locator("script, img, iframe, [onerror]").count() == 0
    assert body.locator("a").count() == 1
    assert body.locator("a").get_attribute("href") == "https://example.com/help"
    assert body.locator("a").get_attribute("rel") == "noopener noreferrer nofollow"
    expect(body.locator("li").first).to_have_text("链接 点我 不可点击")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("window.__violations") == []


def test_chat_page_reads_the_plain_framing(server: tuple[str, str], page: Any) -> None:
    """Without typed events (a server that ignores ?events=typed) the seed's plain framing still works."""
    from playwright.sync_api import expect

    base_url, db_path = server
    page.route("**/api/v1/chat/stream?*", lambda route: route.continue_(url=route.request.url.split("?")[0]))
    open_page(page, base_url)
    with page.expect_response("**/api/v1/chat/stream") as streamed:
        answer = ask(page, "买东西怎么开发票？")
    assert streamed.value.url == f"{base_url}/api/v1/chat/stream"
    assert streamed.value.text().startswith("data: ")  # plain frames, no `event:` lines
    expect(answer.locator(".md ol > li")).to_have_count(2)  # escaped newlines were restored
    expect(answer.locator(".md strong")).to_have_text("增值税电子普通发票")
    # No message id in the plain framing: the page asks the history for it, so 👎 still lands.
    answer.get_by_role("button", name="没帮助").click()
    expect(answer.get_by_role("button", name="没帮助")).to_have_attribute("aria-pressed", "true")
    assert stored(db_path, "SELECT feedback FROM messages WHERE role = 'assistant'") == [("dislike",)]


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    """Poll until `condition()` is truthy: the server stores a stopped answer after the page moves on."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_stop_button_stops_a_model_answer(make_settings: Callable[..., Settings], page: Any) -> None:
    from playwright.sync_api import expect

    standin = StandIn()
    standin.script.append({"kind": "hang_after", "text": "正在为您查询订单", "chunk": 2})
    with standin.serving() as llm_base_url:
        settings = make_settings(llm_api_key="sk-test", llm_base_url=llm_base_url, llm_max_retries=0)
        with serve(create_app(settings)) as base_url:
            open_page(page, base_url)
            page.fill("#input", "帮我查一下订单")
            page.press("#input", "Enter")
            answer = page.locator(".msg.assistant").last
            expect(answer.locator(".md")).to_have_text("正在为您查询订单")
            page.get_by_role("button", name="停止").click()
            expect(answer.locator(".notice")).to_have_text("已停止生成")
            expect(page.get_by_role("button", name="发送")).to_be_visible()
            expect(page.get_by_role("button", name="停止")).to_be_hidden()
            rows = wait_for(
                lambda: stored(
                    settings.memory_db_path, "SELECT content, status FROM messages WHERE role = 'assistant'"
                ),
                "the stopped answer to be stored",
            )
            assert rows == [("正在为您查询订单", "interrupted")]
            wait_for(lambda: standin.disconnects, "the model call to be cancelled")


def test_chat_page_on_a_narrow_screen(server: tuple[str, str], page: Any) -> None:
    from playwright.sync_api import expect

    base_url, _ = server
    page.set_viewport_size({"width": 390, "height": 780})
    open_page(page, base_url)
    sidebar = page.locator("#sidebar")
    expect(sidebar).not_to_be_in_viewport()
    answer = ask(page, "买东西怎么开发票？")
    expect(answer.locator(".md")).to_contain_text("增值税电子普通发票")
    box = answer.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    page.get_by_role("button", name="打开会话列表").click()
    expect(sidebar).to_be_in_viewport()
    expect(page.locator(".session-title")).to_have_text(["买东西怎么开发票？"])
    page.get_by_role("button", name="＋ 新对话").click()
    expect(sidebar).not_to_be_in_viewport()
    expect(page.locator("#welcome")).to_be_visible()
    expect(page.locator(".msg")).to_have_count(0)


def test_chat_page_with_end_user_tokens(make_settings: Callable[..., Settings], page: Any) -> None:
    """With AUTH_MODE=jwt the page sends the token it was opened with (?token=) on every call."""
    from playwright.sync_api import expect

    from .security_utils import jwt_settings, token

    settings = make_settings(**jwt_settings())
    with serve(create_app(settings)) as base_url:
        page.goto(f"{base_url}/chat?user=jwt_user&token={token('jwt_user')}")
        page.wait_for_selector("body[data-ready='true']", state="attached")
        answer = ask(page, "买东西怎么开发票？")
        expect(answer.locator(".md strong")).to_have_text("增值税电子普通发票")
        page.reload()
        page.wait_for_selector("body[data-ready='true']", state="attached")
        expect(page.locator(".msg.assistant")).to_have_count(1)
    assert stored(settings.memory_db_path, "SELECT user_id FROM chat_sessions") == [("jwt_user",)]
