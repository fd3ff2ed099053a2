"""The chat page at /chat: plain HTML, CSS and JS from c_app/web, served by the app itself (no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# The page builds only text nodes from answers; this policy is the second line of defence should
# that ever slip: no inline script or handler runs, and the page talks to its own origin only.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    # image_url parts may name remote hosts that IMAGE_URL_HOSTS allows.
    "img-src 'self' data: blob: http: https:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

router = APIRouter()


@router.get("/chat", include_in_schema=False)
async def chat_page() -> FileResponse:
    return FileResponse(
        WEB_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        # Our own CSP (the security middleware keeps a response's CSP) and the other headers from it.
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
    )


def setup_chat_page(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/chat/assets", StaticFiles(directory=WEB_DIR / "assets"), name="chat-assets")
