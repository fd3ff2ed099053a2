"""The chat page takes its end-user token from the URL fragment (`/chat?user=…#token=<jwt>`), which never
reaches the server or its logs, and wipes any token from the address bar once read.

Headless Debian chromium driven by Playwright, as in test_chat_page.py (SQLite only).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from c_app.config import Settings
from c_app.main import create_app

from .browser import CHROMIUM, browser, new_tab
from .security_utils import jwt_settings, token
from .servers import serve

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
    pytest.mark.skipif(
        os.environ.get("C_APP_TEST_DB", "sqlite") != "sqlite", reason="browser test runs on SQLite only"
    ),
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


@pytest.fixture
def page() -> Iterator[Any]:
    with browser() as launched:
        yield new_tab(launched, width=1280, height=720)


def ask(page: Any, question: str) -> Any:
    answers = page.locator(".msg.assistant")
    before = answers.count()
    page.fill("#input", question)
    page.press("#input", "Enter")
    answer = answers.nth(before)
    answer.locator(".feedback").wait_for()  # present once the answer is stored
    return answer


def owners(db_path: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT DISTINCT user_id FROM chat_sessions ORDER BY user_id").fetchall()


@pytest.mark.parametrize("where", ["fragment", "query"])
def test_token_from_the_fragment_and_gone_from_the_address_bar(
    make_settings: Callable[..., Settings], page: Any, where: str
) -> None:
    from playwright.sync_api import expect

    settings = make_settings(**jwt_settings())
    user = f"pw_{where}"
    secret = token(user)
    # The fragment is the way; `?token=` still works for old links, but leaves the address bar at once.
    opened = (
        f"/chat?user={user}#token={secret}" if where == "fragment" else f"/chat?user={user}&token={secret}"
    )
    seen_urls: list[str] = []
    page.on("request", lambda request: seen_urls.append(request.url))
    with serve(create_app(settings)) as base_url:
        page.goto(base_url + opened)
        page.wait_for_selector("body[data-ready='true']", state="attached")
        href = page.evaluate("location.href")
        assert secret not in href and "token" not in href, href
        assert href == f"{base_url}/chat?user={user}"
        answer = ask(page, "买东西怎么开发票？")
        expect(answer.locator(".md strong")).to_have_text("增值税电子普通发票")
        # A reload keeps working for this tab, without the token ever coming back into the URL.
        page.reload()
        page.wait_for_selector("body[data-ready='true']", state="attached")
        expect(page.locator(".msg.assistant")).to_have_count(1)
        assert secret not in page.evaluate("location.href")
    assert owners(settings.memory_db_path) == [(user,)]
    # After the first navigation, no request the page made (API calls, the reload) carried the token.
    assert seen_urls and not [url for url in seen_urls[1:] if secret in url], seen_urls
