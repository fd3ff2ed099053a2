"""Security headers on every response (pure ASGI, so streams pass through untouched).

JSON and files get a CSP that allows nothing (`default-src 'none'`); HTML pages get one that lets
the app's own page run (scripts, styles and connections to itself only). /docs and /redoc load
Swagger UI / ReDoc from a CDN by default, so their CSP names that CDN. A response that sets its
own CSP keeps it.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_CSP = "default-src 'none'; frame-ancestors 'none'"
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_CDN = "https://cdn.jsdelivr.net"
DOCS_CSP = (
    f"default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com {_CDN}; "
    f"style-src 'self' 'unsafe-inline' {_CDN} https://fonts.googleapis.com; font-src 'self' https://fonts.gstatic.com; "
    f"script-src 'self' 'unsafe-inline' {_CDN}; worker-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")


class SecurityHeaders:
    def __init__(self, app: ASGIApp, *, hsts_seconds: int = 0) -> None:
        self.app = app
        self.static: list[tuple[str, str]] = [
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"),
            ("Cross-Origin-Opener-Policy", "same-origin"),
        ]
        if hsts_seconds > 0:
            self.static.append(("Strict-Transport-Security", f"max-age={hsts_seconds}; includeSubDomains"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.static:
                    headers.setdefault(name, value)
                if "content-security-policy" not in headers:
                    if path.startswith(DOCS_PATHS):
                        csp = DOCS_CSP
                    elif headers.get("content-type", "").startswith("text/html"):
                        csp = PAGE_CSP
                    else:
                        csp = API_CSP
                    headers["Content-Security-Policy"] = csp
            await send(message)

        await self.app(scope, receive, with_headers)
