"""Replica freshness: how long after server A answers a write does server B's search show it.

Two uvicorn processes (c_app.main:app) on one fresh SQLite file (or DATABASE_URL's PostgreSQL, in
a throw-away schema), exactly as tests/test_two_processes.py starts them. Each round writes on A
(a private memory: add, update, delete; a knowledge entry: add, update, delete) and polls B's
POST /api/v1/chat/memory/retrieve every 20 ms until the change shows. Reported per kind of
change: median, p90 and max of the delay in ms (the design's target: within a second). The test
only checks that B catches up at all; the timing lives here.

    .venv/bin/python bench/freshness.py [--rounds 20]

The last line printed is one JSON object {kind: {"p50_ms", "p90_ms", "max_ms"}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_two_processes import (
    ADMIN_TOKEN,
    USER,
    has,
    lacks,
    retrieve,
    server_env,
    server_process,
    wait_ready,
)

LIMIT = 30.0  # seconds: give up on one change after this long


async def delay_until(
    client: httpx.AsyncClient, base: str, query: str, condition: Callable[[list[dict[str, Any]]], bool]
) -> float:
    """Seconds until `condition` holds for B's hits (timed from the call, i.e. from A's answer)."""
    started = time.perf_counter()
    while True:
        if condition(await retrieve(client, base, query)):
            return time.perf_counter() - started
        if time.perf_counter() - started > LIMIT:
            raise SystemExit(f"B did not show the change within {LIMIT}s")
        await asyncio.sleep(0.02)


async def one_round(client: httpx.AsyncClient, a: str, b: str, n: int, out: dict[str, list[float]]) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    query = f"第{n}号收货地址在哪里"
    response = await client.post(
        f"{a}/api/v1/chat/memory/add",
        json={"user_id": USER, "content": f"第{n}号收货地址是杭州市西湖区文三路{n}号", "metadata": {}},
    )
    response.raise_for_status()
    memory_id = response.json()["data"]["memory_id"]
    out["private add"].append(await delay_until(client, b, query, has(memory_id, "private", "文三路")))
    response = await client.put(
        f"{a}/api/v1/chat/memory/private/{USER}/{memory_id}",
        json={"content": f"第{n}号收货地址改为上海市浦东新区世纪大道{n}号"},
    )
    response.raise_for_status()
    out["private update"].append(await delay_until(client, b, query, has(memory_id, "private", "世纪大道")))
    (await client.delete(f"{a}/api/v1/chat/memory/private/{USER}/{memory_id}")).raise_for_status()
    out["private delete"].append(await delay_until(client, b, query, lacks(memory_id)))

    question = f"第{n}号量子保温杯怎么清洗"
    response = await client.post(
        f"{a}/api/v1/admin/knowledge",
        headers=admin,
        json={"question": question, "answer": "请用温水和软毛刷清洗。", "category": "售后"},
    )
    response.raise_for_status()
    entry_id = response.json()["data"]["id"]
    out["knowledge add"].append(await delay_until(client, b, question, has(entry_id, "public", "软毛刷")))
    response = await client.put(
        f"{a}/api/v1/admin/knowledge/{entry_id}", headers=admin, json={"answer": "请用湿布擦拭后晾干。"}
    )
    response.raise_for_status()
    out["knowledge update"].append(await delay_until(client, b, question, has(entry_id, "public", "湿布")))
    (await client.delete(f"{a}/api/v1/admin/knowledge/{entry_id}", headers=admin)).raise_for_status()
    out["knowledge delete"].append(await delay_until(client, b, question, lacks(entry_id)))


async def measure(rounds: int, workdir: Path, database: dict[str, Any]) -> dict[str, list[float]]:
    env = server_env(database, workdir)
    out: dict[str, list[float]] = {
        kind: [] for kind in ("private add", "private update", "private delete")
    } | {kind: [] for kind in ("knowledge add", "knowledge update", "knowledge delete")}
    with ExitStack() as stack:
        async with httpx.AsyncClient(timeout=60) as client:
            a = stack.enter_context(server_process(env, workdir, workdir / "a.log"))
            await wait_ready(client, a, workdir / "a.log")  # A first: it migrates the schema
            b = stack.enter_context(server_process(env, workdir, workdir / "b.log"))
            await wait_ready(client, b, workdir / "b.log")
            for base in (a, b):
                await retrieve(client, base, "预热")  # jieba and the statistics load outside the timing
            for n in range(rounds):
                await one_round(client, a, b, n, out)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="freshness-") as tmp:
        workdir = Path(tmp)
        if not url or url.startswith("sqlite"):
            figures = await measure(args.rounds, workdir, {"memory_db_path": str(workdir / "fresh.db")})
        else:
            import asyncpg

            schema = f"freshness_{uuid.uuid4().hex[:10]}"
            plain = url.replace("postgresql+asyncpg://", "postgresql://")
            conn = await asyncpg.connect(plain)
            try:
                await conn.execute(f'CREATE SCHEMA "{schema}"')
                figures = await measure(
                    args.rounds, workdir, {"database_url": url, "database_schema": schema}
                )
            finally:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                await conn.close()
    summary: dict[str, dict[str, float]] = {}
    for kind, delays in figures.items():
        ms = sorted(d * 1000 for d in delays)
        summary[kind] = {
            "p50_ms": round(statistics.median(ms), 1),
            "p90_ms": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 1),
            "max_ms": round(ms[-1], 1),
        }
        print(
            f"{kind:17} p50 {summary[kind]['p50_ms']:7.1f} ms   p90 {summary[kind]['p90_ms']:7.1f} ms"
            f"   max {summary[kind]['max_ms']:7.1f} ms   ({len(ms)} changes)"
        )
    print(json.dumps(summary, ensure_ascii=False))


if __name__ == "__main__":
    asyncio.run(main())
