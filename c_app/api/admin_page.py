"""The operator console at /admin: plain HTML, CSS and JS from c_app/web, served by the app (no build step).

The page is an empty shell, the same for everyone: it asks for the ADMIN_TOKEN and then reads every
datum from /api/v1/admin/..., which refuse a caller without that token. Charts are drawn with uPlot,
vendored under c_app/web/assets/vendor/uplot (see its README)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .chat_page import WEB_DIR

# Like the chat page's: no inline script or style attribute, connections to this origin only. Images
# are the app's own (and blob: for nothing but downloads); uPlot styles its nodes through the CSSOM.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

router = APIRouter()


@router.get("/admin", include_in_schema=False)
async def admin_page() -> FileResponse:
    return FileResponse(
        WEB_DIR / "admin.html",
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
    )


def setup_admin_page(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/admin/assets", StaticFiles(directory=WEB_DIR / "assets"), name="admin-assets")
