"""Headless Chromium for the page tests: Debian's /usr/bin/chromium driven by Playwright (never
Playwright's own browser download). `browser()` yields a launched browser and closes it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000
# Any violation means markup reached the DOM and the CSP had to stop it.
WATCH_CSP = (
    "window.__violations = []; document.addEventListener('securitypolicyviolation', "
    "e => window.__violations.push(e.violatedDirective));"
)


@contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


def new_tab(launched: Any, *, width: int = 1280, height: int = 800, **options: Any) -> Any:
    """A tab in a context of its own (its own storage: two tabs are two people), page errors collected
    in `tab.errors`, CSP violations in `window.__violations`; `options` go to the context."""
    context = launched.new_context(viewport={"width": width, "height": height}, locale="zh-CN", **options)
    context.add_init_script(WATCH_CSP)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.errors = errors
    return tab
