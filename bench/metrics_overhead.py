"""What the request metrics middleware costs a request: the same ASGI app called with and without it.

    python bench/metrics_overhead.py [--requests N] [--rounds R]

The inner app answers at once (start + body), so the difference is the middleware alone: the
route template read from the scope, the status seen on the way out, one counter and one histogram
update (children cached per label set). Both variants run in one event loop, interleaved over R
rounds; the median per-request time of each is reported, and their difference. A route matched by
the router (scope holds it) and an unmatched path (the app's routes asked again) are measured.
Also reported: the full app's GET /health over ASGI, with the middleware and with it removed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from typing import Any

import httpx

from c_app.api.middleware.metrics import RequestMetrics
from c_app.config import Settings
from c_app.main import create_app


class _Route:
    path = "/api/v1/chat/session/{session_id}"


async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
    scope["route"] = _Route  # as the router leaves it
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def _send(message: dict[str, Any]) -> None:
    return None


async def per_request(app: Any, requests: int, path: str) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "app": None}
        await app(scope, _receive, _send)
    return (time.perf_counter() - started) / requests


async def full_app(requests: int, metered: bool) -> float:
    folder = tempfile.mkdtemp()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, memory_db_path=f"{folder}/b.db", upload_dir=f"{folder}/up", load_sample_kb=False
    )
    app = create_app(settings)
    if not metered:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not RequestMetrics]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
            for _ in range(50):
                await client.get("/health")
            started = time.perf_counter()
            for _ in range(requests):
                await client.get("/health")
            return (time.perf_counter() - started) / requests


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    metered = RequestMetrics(inner)
    for label, path in (("matched route", "/api/v1/chat/session/abc"), ("unmatched path", "/nope")):
        bare_times, metered_times = [], []
        await per_request(metered, 1000, path)  # warm: label children created
        for _ in range(args.rounds):
            bare_times.append(await per_request(inner, args.requests, path))
            metered_times.append(await per_request(metered, args.requests, path))
        bare, with_metrics = statistics.median(bare_times), statistics.median(metered_times)
        print(
            f"{label}: bare {bare * 1e6:.2f} us, with metrics {with_metrics * 1e6:.2f} us, "
            f"overhead {(with_metrics - bare) * 1e6:.2f} us/request"
        )
    requests = max(args.requests // 20, 200)
    plain, counted = [], []
    for _ in range(3):
        plain.append(await full_app(requests, metered=False))
        counted.append(await full_app(requests, metered=True))
    print(
        f"GET /health through the whole app: without {statistics.median(plain) * 1e6:.0f} us, "
        f"with {statistics.median(counted) * 1e6:.0f} us"
    )


if __name__ == "__main__":
    asyncio.run(main())
