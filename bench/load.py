"""Load: N concurrent streaming clients for D seconds against a real server (uvicorn subprocess on loopback).

    python bench/load.py                      # 300 clients x 60 s, SQLite then PostgreSQL
    python bench/load.py --backend sqlite --clients 50 --duration 10

Reports turns/s, p50/p99 turn latency (request sent -> `[DONE]` read), failed turns, the server's
resident memory over time; then checks in the database that every acknowledged turn's two messages
are stored exactly once and every session's message_count equals its rows. Exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("C_APP_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
QUESTIONS = [
    "怎么退货？",
    "多久发货",
    "运费怎么算",
    "发票怎么开",
    "会员有什么权益",
    "可以修改收货地址吗",
    "你好",
]


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    acknowledged: dict[str, list[str]] = field(default_factory=dict)  # session -> texts, in order
    failures: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def client_loop(http: httpx.AsyncClient, index: int, deadline: float, results: Results) -> None:
    session_id = f"load-{index}"
    turn = 0
    while time.monotonic() < deadline:
        text = f"{QUESTIONS[turn % len(QUESTIONS)]} #{index}-{turn}"
        body = {
            "user_id": f"user-{index}",
            "session_id": session_id,
            "message": {"role": "user", "content": text},
        }
        started = time.monotonic()
        try:
            async with http.stream("POST", "/api/v1/chat/stream", json=body) as response:
                payload = (await response.aread()).decode()
            frames = [b[len("data: ") :] for b in payload.split("\n\n") if b]
            if (
                response.status_code != 200
                or not frames
                or frames[-1] != "[DONE]"
                or any(f.startswith('{"error"') for f in frames)
            ):
                results.failures.append(f"{session_id}#{turn}: {response.status_code} {payload[:120]!r}")
            else:
                results.latencies.append(time.monotonic() - started)
                results.acknowledged.setdefault(session_id, []).append(text)
        except httpx.HTTPError as exc:
            results.failures.append(f"{session_id}#{turn}: {type(exc).__name__} {exc}")
        turn += 1


async def sample_rss(pid: int, started: float, stop: asyncio.Event, results: Results) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        rss = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
        results.rss.append((time.monotonic() - started, rss))
        try:
            await asyncio.wait_for(stop.wait(), timeout=2.0)
        except TimeoutError:
            pass


def start_server(env: dict[str, str], port: int, workdir: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "c_app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log", "--backlog", "2048"]
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        command, env={**os.environ, **env}, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
    )


async def wait_ready(base: str, server: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(600):
            if server.poll() is not None:
                raise RuntimeError("server exited during start-up")
            try:
                if (await http.get("/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


async def verify_sqlite(path: Path, results: Results) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT session_id, role, content FROM messages ORDER BY id").fetchall()
        counts = dict(conn.execute("SELECT id, message_count FROM chat_sessions").fetchall())
    finally:
        conn.close()
    return check_rows(rows, counts, results)


async def verify_postgres(schema: str, results: Results) -> list[str]:
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    try:
        rows = [
            tuple(r) for r in await conn.fetch("SELECT session_id, role, content FROM messages ORDER BY id")
        ]
        counts = {
            r["id"]: r["message_count"]
            for r in await conn.fetch("SELECT id, message_count FROM chat_sessions")
        }
    finally:
        await conn.close()
    return check_rows(rows, counts, results)


def check_rows(rows: list[Any], counts: dict[str, int], results: Results) -> list[str]:
    problems: list[str] = []
    by_session: dict[str, list[tuple[str, str]]] = {}
    for session_id, role, content in rows:
        by_session.setdefault(session_id, []).append((role, content))
    for session_id, texts in results.acknowledged.items():
        stored = by_session.get(session_id, [])
        questions = [content for role, content in stored if role == "user"]
        for text in texts:
            if questions.count(text) != 1:
                problems.append(f"{session_id}: {text!r} stored {questions.count(text)} times")
        answers = sum(1 for role, _ in stored if role == "assistant")
        if answers < len(texts):
            problems.append(f"{session_id}: {answers} answers for {len(texts)} acknowledged turns")
    for session_id, stored in by_session.items():
        if counts.get(session_id) != len(stored):
            problems.append(f"{session_id}: message_count {counts.get(session_id)} but {len(stored)} rows")
    return problems


async def run(backend: str, clients: int, duration: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"c_app-load-{backend}-"))
    env = {
        "HOST": "127.0.0.1",
        "UPLOAD_DIR": str(workdir / "uploads"),
        "RATE_LIMIT_STREAM": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    schema = f"load_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        env["MEMORY_DB_PATH"] = str(workdir / "load.db")
    else:
        env.update(DATABASE_URL=PG_URL, DATABASE_SCHEMA=schema)
        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.close()
    port = free_port()
    server = start_server(env, port, workdir)
    results = Results()
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base, server)
        limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
        timeout = httpx.Timeout(120.0)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as http:
            started = time.monotonic()
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(server.pid, started, stop, results))
            deadline = started + duration
            await asyncio.gather(*(client_loop(http, i, deadline, results) for i in range(clients)))
            elapsed = time.monotonic() - started
            stop.set()
            await sampler
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    try:
        if backend == "sqlite":
            problems = await verify_sqlite(workdir / "load.db", results)
        else:
            problems = await verify_postgres(schema, results)
    finally:
        if backend != "sqlite":
            conn = await asyncpg.connect(PG_URL)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()
    latencies = sorted(results.latencies)
    turns = len(latencies)
    warm = [rss for t, rss in results.rss if t >= min(10.0, duration / 3)]
    mib = 1024 * 1024
    return {
        "backend": backend,
        "clients": clients,
        "seconds": round(elapsed, 1),
        "turns": turns,
        "turns_per_s": round(turns / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(latencies[int(0.99 * (turns - 1))] * 1000, 1) if latencies else None,
        "failed_turns": len(results.failures),
        "first_failures": results.failures[:5],
        "db_problems": len(problems),
        "first_db_problems": problems[:5],
        "rss_mib_start_warm_end": [
            round(results.rss[0][1] / mib, 1) if results.rss else None,
            round(warm[0] / mib, 1) if warm else None,
            round(results.rss[-1][1] / mib, 1) if results.rss else None,
        ],
        "rss_mib_max_after_warmup": round(max(warm) / mib, 1) if warm else None,
        "server_log": str(workdir / "server.log"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    failed = False
    for backend in backends:
        report = asyncio.run(run(backend, args.clients, args.duration))
        print(json.dumps(report, ensure_ascii=False, indent=1), flush=True)
        failed |= bool(report["failed_turns"] or report["db_problems"] or not report["turns"])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
