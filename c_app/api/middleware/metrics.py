"""Counts and times every HTTP request by route template (never the raw path) and status, and
traces it when tracing is on. Pure ASGI: a dictionary look-up and two metric updates a request.

The route template is what the router matched (FastAPI leaves it in the scope); a path no route
matched is counted as "unmatched", so scanners cannot grow the number of series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers
from starlette.routing import Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...observability import tracing
from ...observability.metrics import HTTP_DURATION, HTTP_REQUESTS

UNMATCHED = "unmatched"
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def route_template(scope: Scope, root_path: str = "") -> str:
    """The template of the route that served `scope` ("/api/v1/chat/session/{session_id}");
    `root_path` as the request arrived (a mount rewrites the scope's)."""
    # FastAPI >= 0.16x: a route of an included router leaves its full template here; before, the
    # included routes were copies with the full path, left in scope["route"].
    context = scope.get("fastapi", {}).get("effective_route_context")
    path = getattr(context, "path", None)
    if isinstance(path, str):
        return path
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    # Docs pages and mounted assets leave no route in the scope: matched again, only on these paths.
    probe = {
        "type": scope["type"],
        "path": scope["path"],
        "root_path": root_path,
        "method": scope.get("method"),
    }
    for route in getattr(scope.get("app"), "routes", ()):
        if isinstance(route, Mount | Route) and route.matches(probe)[0] != Match.NONE:
            return route.path + "/{path}" if isinstance(route, Mount) else route.path
    return UNMATCHED


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (method, route, status) -> the counter's child, (method, route) -> the histogram's.
        self._counted: dict[tuple[str, str, int], Counter] = {}
        self._timed: dict[tuple[str, str], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket" and tracing.enabled():
                await self._traced(scope, receive, send, "WS")
                return
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = scope.get("root_path", "")
        status = 500  # an exception before the response started: the server answers 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if tracing.enabled():
                await self._traced(scope, receive, sent, scope["method"])
            else:
                await self.app(scope, receive, sent)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            route = route_template(scope, root_path)
            self._record(method, route, status, time.perf_counter() - started)

    def _record(self, method: str, route: str, status: int, elapsed: float) -> None:
        counter = self._counted.get((method, route, status))
        if counter is None:
            counter = self._counted[(method, route, status)] = HTTP_REQUESTS.labels(
                method, route, str(status)
            )
        counter.inc()
        histogram = self._timed.get((method, route))
        if histogram is None:
            histogram = self._timed[(method, route)] = HTTP_DURATION.labels(method, route)
        histogram.observe(elapsed)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, method: str) -> None:
        root_path = scope.get("root_path", "")
        attributes: dict[str, Any] = {"http.request.method": method}
        if request_id := scope.get("state", {}).get("request_id"):
            attributes["c_app.request_id"] = request_id
        status: list[int] = []

        async def sent(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        with tracing.server_span(method, Headers(scope=scope), attributes) as span:
            try:
                await self.app(scope, receive, sent)
            finally:
                route = route_template(scope, root_path)
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                if status:
                    span.set_attribute("http.response.status_code", status[0])
