"""The app's own pages: the chat page (/chat), the operator console (/admin), the agent console (/agent).

Plain HTML, CSS and JS from c_app/web, served by the app itself (no build step), each with its own
Content-Security-Policy (the security middleware keeps a response's CSP) and the assets beside it.
The console is an empty shell, the same for everyone: it asks for the ADMIN_TOKEN and then reads
every datum from /api/v1/admin/..., which refuse a caller without that token. Its charts are drawn
with uPlot, vendored under c_app/web/assets/vendor/uplot (see its README). The agent console (issue 10) is
the same kind of shell: it asks for an agent's token and reads everything from /api/v1/agent/...
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# The pages build only text nodes from answers and data; the policy is the second line of defence
# should that ever slip: no inline script, handler or style attribute runs (uPlot styles its nodes
# through the CSSOM), and a page talks to its own origin only.
_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src {images}; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The chat page shows image_url parts, which may name remote hosts that IMAGE_URL_HOSTS allows.
CHAT_POLICY = _POLICY.format(images="'self' data: blob: http: https:")
ADMIN_POLICY = _POLICY.format(images="'self' data: blob:")


def _serve(app: FastAPI, path: str, page: str, policy: str) -> None:
    async def serve_page() -> FileResponse:
        return FileResponse(
            WEB_DIR / page,
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": policy, "Cache-Control": "no-cache"},
        )

    app.add_api_route(path, serve_page, methods=["GET"], include_in_schema=False)
    app.mount(f"{path}/assets", StaticFiles(directory=WEB_DIR / "assets"), name=f"{path.strip('/')}-assets")


def setup_pages(app: FastAPI) -> None:
    _serve(app, "/chat", "index.html", CHAT_POLICY)
    _serve(app, "/admin", "admin.html", ADMIN_POLICY)
    _serve(app, "/agent", "agent.html", ADMIN_POLICY)
