"""What c_app adds on top of the model: time to first byte and total time of a streamed answer.

A stand-in OpenAI-compatible server (tests/llm_standin.py, its own process) streams N one-character
chunks as fast as it can. The same streams are timed twice at each concurrency: straight from the
stand-in, and through c_app's POST /api/v1/chat/stream (a real uvicorn process on the SQLite
file, with a 10,000-entry knowledge base and 20 messages of history in every session). Reported:
median and p99 of TTFB and total time for both, the added latency, and the throughput ratio.

    python bench/llm_stream.py [--chunks 50] [--concurrency 1 50 200] [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from c_app.config import Settings
from c_app.container import build_services, read_jsonl
from c_app.db import messages as messages_repo
from c_app.db import sessions as sessions_repo
from tests.servers import free_port


def make_kb(path: Path, size: int) -> None:
    base = read_jsonl(ROOT / "c_app" / "data" / "sample_kb.jsonl")
    with path.open("w", encoding="utf-8") as out:
        for i in range(size):
            entry = dict(base[i % len(base)])
            entry["external_id"] = f"bench-{i}"
            entry["question"] = f"{entry['question']}（编号{i}）"
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")


async def prepare(settings: Settings, sessions: int, history: int) -> None:
    services = build_services(settings)
    db = services.db
    await services.start()
    async with db.transaction() as s:
        for n in range(sessions):
            sid = f"bench-{n}"
            await sessions_repo.create(s, session_id=sid, user_id=f"u{n}", title="bench")
            for i in range(history):
                role = "user" if i % 2 == 0 else "assistant"
                await messages_repo.add(
                    s, session_id=sid, user_id=f"u{n}", role=role, content=f"历史消息{i}，关于退货和发票。"
                )
            await sessions_repo.record_messages(s, sid, count=history, at=datetime.now(UTC))
    await services.aclose()


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not start")


async def one_direct(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "怎么退货"}]}
    start = time.perf_counter()
    first = 0.0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not first and '"content": "好' in line:
                first = time.perf_counter() - start
    return first, time.perf_counter() - start


async def one_app(client: httpx.AsyncClient, url: str, n: int) -> tuple[float, float]:
    body = {
        "user_id": f"u{n}",
        "session_id": f"bench-{n}",
        "message": {"role": "user", "content": "买的东西不想要了怎么退货？"},
    }
    start = time.perf_counter()
    first = 0.0
    async with client.stream("POST", url + "/api/v1/chat/stream", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not first and line.startswith("data: 好"):
                first = time.perf_counter() - start
            if line.startswith('data: {"error"'):
                raise RuntimeError(line)
    return first, time.perf_counter() - start


async def run(kind: str, url: str, concurrency: int, requests: int, sessions: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    results: list[tuple[float, float]] = []
    counter = iter(range(requests))
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def worker() -> None:
            for n in counter:
                if kind == "direct":
                    results.append(await one_direct(client, url))
                else:
                    results.append(await one_app(client, url, n % sessions))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ttfb = sorted(r[0] * 1000 for r in results)
    total = sorted(r[1] * 1000 for r in results)
    return {
        "ttfb_p50": statistics.median(ttfb),
        "ttfb_p99": ttfb[min(len(ttfb) - 1, int(len(ttfb) * 0.99))],
        "total_p50": statistics.median(total),
        "total_p99": total[min(len(total) - 1, int(len(total) * 0.99))],
        "per_s": len(results) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument(
        "--requests", type=int, default=400, help="streams per measurement (at least the concurrency)"
    )
    parser.add_argument("--kb", type=int, default=10_000)
    args = parser.parse_args()
    sessions = max(args.concurrency)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        kb = tmp_path / "kb.jsonl"
        make_kb(kb, args.kb)
        stand_port, app_port = free_port(), free_port()
        env = {
            **os.environ,
            "MEMORY_DB_PATH": str(tmp_path / "bench.db"),
            "UPLOAD_DIR": str(tmp_path / "uploads"),
            "SAMPLE_KB_PATH": str(kb),
            "LLM_API_KEY": "sk-bench",
            "LLM_BASE_URL": f"http://127.0.0.1:{stand_port}/v1",
            "LLM_TIMEOUT": "120",
            "LOG_LEVEL": "WARNING",
            "RATE_LIMIT_STREAM": "",
        }
        t0 = time.perf_counter()
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            memory_db_path=env["MEMORY_DB_PATH"],
            upload_dir=env["UPLOAD_DIR"],
            sample_kb_path=str(kb),
        )
        asyncio.run(prepare(settings, sessions, 20))
        print(
            f"prepared {args.kb} entries and {sessions} sessions x 20 messages in {time.perf_counter() - t0:.1f}s"
        )
        stand = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.llm_standin",
                "--port",
                str(stand_port),
                "--chunks",
                str(args.chunks),
            ],
            cwd=ROOT,
            env=env,
        )
        app = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "c_app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(app_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
        )
        try:
            wait_up(f"http://127.0.0.1:{stand_port}/v1/models", stand)
            wait_up(f"http://127.0.0.1:{app_port}/health", app)
            summary = []
            for c in args.concurrency:
                n = max(c, min(args.requests, c * 10))
                direct = asyncio.run(run("direct", f"http://127.0.0.1:{stand_port}", c, n, sessions))
                through = asyncio.run(run("app", f"http://127.0.0.1:{app_port}", c, n, sessions))
                row = {
                    "concurrency": c,
                    "streams": n,
                    "direct": {k: round(v, 1) for k, v in direct.items()},
                    "c_app": {k: round(v, 1) for k, v in through.items()},
                    "added_ttfb_p50_ms": round(through["ttfb_p50"] - direct["ttfb_p50"], 1),
                    "added_ttfb_p99_ms": round(through["ttfb_p99"] - direct["ttfb_p99"], 1),
                    "added_total_p50_ms": round(through["total_p50"] - direct["total_p50"], 1),
                    "throughput_ratio": round(through["per_s"] / direct["per_s"], 3),
                }
                summary.append(row)
                print(json.dumps(row, ensure_ascii=False))
            print(json.dumps({"chunks": args.chunks, "kb": args.kb, "results": summary}, ensure_ascii=False))
        finally:
            for proc in (app, stand):
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
