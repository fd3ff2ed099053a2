"""Hostile inputs against the app in-process: time, peak memory, and how long a /health waits meanwhile.

    .venv/bin/python bench/hardening.py [--parallel N]

The app runs with its lifespan on a fresh SQLite file (sample knowledge base loaded, rate limits
off so nothing is refused) behind httpx's ASGITransport, so a request that holds the event loop
holds every other request too, exactly as in the server. Each case is run twice: once for time,
with a probe (/health, or an ordinary /stream turn) due every 20 ms meanwhile, one at a time,
whose longest wait counts from when it was due (a blocked event loop shows as a long wait); then
under tracemalloc for the peak of Python allocations.

Cases: a private memory PUT with 10,000 x U+2A0C (30 KB, 40,000 characters after NFKC), plain
and between two letters, followed by that user's next search (an index may apply a write then);
a /memory/retrieve of 2,000 x 吗 (6 KB, the longest query accepted), plain and followed by a
letter; N such retrieves at once (each a different string); an admin Markdown import of
"# a" + 1,500 spaces + "x" (1.5 KB). Prints a table; asserts nothing.

To measure other code (the committed version, say), run this file from a copy of the repository:
it puts its own repository first on sys.path. The line "c_app from ..." says which code ran.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

import c_app
from c_app.config import Settings
from c_app.main import create_app

USER = "hardening-user"
ADMIN = {"Authorization": "Bearer bench-admin"}
PROBE_EVERY = 0.02  # seconds between probes (/health or a /stream) while a case runs

Request = Callable[[httpx.AsyncClient, int], Awaitable[Any]]  # (client, which of the copies sent at once)


def settings(folder: str) -> Settings:
    values: dict[str, Any] = {
        "memory_db_path": f"{folder}/bench.db",
        "upload_dir": f"{folder}/uploads",
        "admin_token": "bench-admin",
        "index_refresh_interval": 0.0,
        "rate_limit_stream": "0",
        "rate_limit_upload": "0",
        "rate_limit_memory": "0",
    }
    if "rate_limit_retrieve" in Settings.model_fields:
        values["rate_limit_retrieve"] = "0"
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def forget_cached_analysis() -> None:
    """Empty the text-analysis caches, so the second pass of a case is not answered from them."""
    for module in ("c_app.retrieval.text", "c_app.retrieval.index"):
        for value in vars(sys.modules[module]).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


async def put_memory(content: str, memory_id: int, client: httpx.AsyncClient, copy: int) -> None:
    """The update, then the user's next search (which pays for indexing the update if the PUT did not)."""
    body = {"content": content}
    response = await client.put(f"/api/v1/chat/memory/private/{USER}/{memory_id}", json=body)
    response.raise_for_status()
    await retrieve("a", client, copy)


def particles(copy: int) -> str:
    """2,000 particles (6 KB, the longest query accepted), a different string for each copy."""
    return "吗" * copy + "呢" + "吗" * (1_999 - copy)


async def retrieve(query: str, client: httpx.AsyncClient, copy: int) -> None:
    body = {"user_id": USER, "query": query, "limit": 5}
    response = await client.post("/api/v1/chat/memory/retrieve", json=body)
    response.raise_for_status()


async def import_markdown(text: str, client: httpx.AsyncClient, copy: int) -> None:
    files = {"file": (f"hostile-{copy}.md", text.encode())}
    response = await client.post("/api/v1/admin/knowledge/import", files=files, headers=ADMIN)
    response.raise_for_status()


async def health(client: httpx.AsyncClient) -> None:
    (await client.get("/health")).raise_for_status()


async def stream(client: httpx.AsyncClient) -> None:
    body = {"user_id": "someone-else", "session_id": "s1", "message": {"role": "user", "content": "怎么退货"}}
    async with client.stream("POST", "/api/v1/chat/stream", json=body) as response:
        response.raise_for_status()
        await response.aread()


async def nothing(client: httpx.AsyncClient, run: int) -> None:
    return None


async def measure(
    client: httpx.AsyncClient,
    request: Request,
    copies: int,
    probe: Callable[[httpx.AsyncClient], Awaitable[None]],
) -> dict[str, Any]:
    """Time of the case (all copies at once); the longest a probe waited while it ran (a probe is
    due every PROBE_EVERY seconds from the start, one at a time, and its wait counts from when it
    was due, so a blocked event loop shows as a long wait); which finished first, the case or the
    first probe; and the allocation peak (a second pass under tracemalloc, which slows Python
    down: not timed)."""
    finished: dict[str, float] = {}
    waits: list[float] = []

    async def case() -> None:
        await asyncio.gather(*(request(client, i) for i in range(copies)))
        finished["case"] = time.perf_counter()

    async def probing() -> None:
        due = started + PROBE_EVERY
        while True:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await probe(client)
            done = time.perf_counter()
            finished.setdefault("probe", done)
            waits.append(done - due)
            if "case" in finished:
                return
            due = max(due + PROBE_EVERY, done)

    forget_cached_analysis()
    started = time.perf_counter()
    await asyncio.gather(case(), probing())

    forget_cached_analysis()
    tracemalloc.start()
    tracemalloc.reset_peak()
    await asyncio.gather(*(request(client, i) for i in range(copies)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "seconds": finished["case"] - started,
        "probe": max(waits),
        "first": min(finished, key=finished.__getitem__),
        "peak": peak,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parallel", type=int, default=30, help="retrieves sent at once in the parallel case"
    )
    args = parser.parse_args()
    print(f"c_app from {Path(c_app.__file__).parent}")
    with tempfile.TemporaryDirectory(prefix="c_app-hardening-") as folder:
        app = create_app(settings(folder))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as client:
                added = await client.post(
                    "/api/v1/chat/memory/add", json={"user_id": USER, "content": "我住在上海"}
                )
                added.raise_for_status()
                memory_id = added.json()["data"]["memory_id"]
                # The user's private index is built on the first search; a PUT then updates it in place.
                await retrieve("上海", client, 0)
                await client.get("/health")
                many = f"{args.parallel} x retrieve 2,000 x 吗/呢 at once"
                ascii_run = "a" + "⨌" * 9_998 + "a"
                markdown = "# a" + " " * 1500 + "x\n"
                cases: list[tuple[str, Request, int, Any]] = [
                    ("nothing (probe: /stream 怎么退货)", nothing, 1, stream),
                    (
                        "PUT memory 10,000 x ⨌, then a search",
                        partial(put_memory, "⨌" * 10_000, memory_id),
                        1,
                        health,
                    ),
                    (
                        "PUT memory a + 9,998 x ⨌ + a, then a search",
                        partial(put_memory, ascii_run, memory_id),
                        1,
                        health,
                    ),
                    ("retrieve 2,000 x 吗", partial(retrieve, "吗" * 2_000), 1, health),
                    ("retrieve 1,999 x 吗 + x", partial(retrieve, "吗" * 1_999 + "x"), 1, health),
                    (many, lambda c, i: retrieve(particles(i), c, i), args.parallel, health),
                    (
                        f"{many} (probe: /stream)",
                        lambda c, i: retrieve(particles(i), c, i),
                        args.parallel,
                        stream,
                    ),
                    ("import Markdown # a + 1,500 spaces + x", partial(import_markdown, markdown), 1, health),
                ]
                print(
                    f"{'case (probe: /health unless named)':<58} {'time s':>8} {'probe max wait s':>16} {'first done':>11} {'peak MB':>8}"
                )
                for name, request, copies, probe in cases:
                    result = await measure(client, request, copies, probe)
                    print(
                        f"{name:<58} {result['seconds']:>8.3f} {result['probe']:>16.3f} "
                        f"{result['first']:>11} {result['peak'] / 1e6:>8.1f}"
                    )


if __name__ == "__main__":
    asyncio.run(main())
