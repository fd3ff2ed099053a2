"""Load: N concurrent streaming clients for D seconds against a real server (run_server.py on loopback).

    python bench/load.py                      # 300 clients x 60 s, SQLite then PostgreSQL
    python bench/load.py --backend sqlite --clients 50 --duration 10
    python bench/load.py --backend sqlite --workers 2 --root /path/to/other/checkout
    python bench/load.py --backend sqlite --profile /tmp/turn.pyisession  # pyinstrument on the server
    python bench/load.py --backend sqlite --clients 50 --duration 10 --model-chunks 50  # the model turn

Reports turns/s, p50/p99 turn latency (request sent -> `[DONE]` read) and first byte, the server's
CPU time per turn and resident memory over time; then checks in the database that every
acknowledged turn's two messages are stored exactly once, in the order they were sent (each
question followed by its answer), and every session's message_count equals its rows. Exits 1 on
any failure.
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
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
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
    first_bytes: list[float] = field(default_factory=list)  # request sent -> first answer piece
    acknowledged: dict[str, list[str]] = field(default_factory=dict)  # session -> texts, in order
    failures: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def client_loop(
    http: httpx.AsyncClient, index: int, deadline: float, results: Results, *, tag: str = ""
) -> None:
    """One client: turn after turn into its own session until the deadline (`tag` keeps the
    sessions and questions of several runs against one server apart)."""
    session_id = f"load{tag}-{index}"
    turn = 0
    while time.monotonic() < deadline:
        text = f"{QUESTIONS[turn % len(QUESTIONS)]} #{tag}{index}-{turn}"
        body = {
            "user_id": f"user-{index}",
            "session_id": session_id,
            "message": {"role": "user", "content": text},
        }
        started = time.monotonic()
        first = 0.0
        try:
            async with http.stream("POST", "/api/v1/chat/stream", json=body) as response:
                chunks = []
                async for chunk in response.aiter_bytes():
                    if not first and chunk.startswith(b"data: ") and not chunk.startswith(b"data: [DONE]"):
                        first = time.monotonic() - started
                    chunks.append(chunk)
                payload = b"".join(chunks).decode()
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
                results.first_bytes.append(first)
                results.acknowledged.setdefault(session_id, []).append(text)
        except httpx.HTTPError as exc:
            results.failures.append(f"{session_id}#{turn}: {type(exc).__name__} {exc}")
        turn += 1


def rss_now(pid: int) -> int:
    """Resident memory of the server and its worker processes, summed."""
    total = 0
    for process in process_tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


async def sample_rss(pid: int, started: float, stop: asyncio.Event, results: Results) -> None:
    while not stop.is_set():
        results.rss.append((time.monotonic() - started, rss_now(pid)))
        try:
            await asyncio.wait_for(stop.wait(), timeout=2.0)
        except TimeoutError:
            pass


def start_server(command: list[str], env: dict[str, str], workdir: Path) -> subprocess.Popen[bytes]:
    with open(workdir / "server.log", "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            command, env={**os.environ, **env}, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
        )


async def wait_ready(base: str, server: subprocess.Popen[bytes], path: str = "/health") -> None:
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(600):
            if server.poll() is not None:
                raise RuntimeError("server exited during start-up")
            try:
                if (await http.get(path)).status_code == 200:
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
    """Every acknowledged question stored exactly once, the session's questions in the order they
    were sent, each followed by its answer; every session's message_count equal to its rows."""
    problems: list[str] = []
    by_session: dict[str, list[tuple[str, str]]] = {}
    for session_id, role, content in rows:  # in id order
        by_session.setdefault(session_id, []).append((role, content))
    for session_id, texts in results.acknowledged.items():
        stored = by_session.get(session_id, [])
        questions = [content for role, content in stored if role == "user"]
        for text in texts:
            if questions.count(text) != 1:
                problems.append(f"{session_id}: {text!r} stored {questions.count(text)} times")
        sent = set(texts)
        if [q for q in questions if q in sent] != texts:
            problems.append(f"{session_id}: questions stored out of the order they were sent")
        for position, (role, content) in enumerate(stored):
            if role == "user" and content in sent:
                following = stored[position + 1][0] if position + 1 < len(stored) else None
                if following != "assistant":
                    problems.append(f"{session_id}: {content!r} is not followed by its answer")
    for session_id, stored in by_session.items():
        if counts.get(session_id) != len(stored):
            problems.append(f"{session_id}: message_count {counts.get(session_id)} but {len(stored)} rows")
    return problems


def process_tree(pid: int) -> list[psutil.Process]:
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server and its worker processes so far."""
    total = 0.0
    for process in process_tree(pid):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def percentile(values: list[float], share: float) -> float | None:
    ordered = sorted(values)
    return ordered[int(share * (len(ordered) - 1))] if ordered else None


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    process.send_signal(sig)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()


@asynccontextmanager
async def standin_model(chunks: int) -> AsyncIterator[str]:
    """The stand-in model (tests/llm_standin.py, its own process) streaming `chunks` one-character
    chunks per answer as fast as it can; yields its OpenAI base URL."""
    workdir = Path(tempfile.mkdtemp(prefix="c_app-standin-"))
    port = free_port()
    command = [sys.executable, "-m", "tests.llm_standin", "--port", str(port), "--chunks", str(chunks)]
    process = start_server(command, {"PYTHONPATH": str(ROOT)}, workdir)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", process, "/v1/models")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(process)


def model_env(model_url: str) -> dict[str, str]:
    """c_app's settings for the model turn: the LLM responder on `model_url` (the knowledge base
    still retrieves and decides; the model writes every answer)."""
    return {"LLM_API_KEY": "sk-bench", "LLM_BASE_URL": model_url, "LLM_TIMEOUT": "120"}


@dataclass
class Server:
    """A c_app server (run_server.py of a checkout) on loopback, with its own database."""

    backend: str
    base: str
    process: subprocess.Popen[bytes]
    workdir: Path
    schema: str


@asynccontextmanager
async def c_app_server(
    backend: str,
    *,
    root: Path = ROOT,
    workers: int = 1,
    env: dict[str, str] | None = None,
    profile: Path | None = None,
) -> AsyncIterator[Server]:
    """Start `root`'s run_server.py on a fresh database (SQLite file or PostgreSQL schema) and
    wait until it answers; stop it on exit, dropping the schema. `profile`: run it under
    pyinstrument (one worker), its report written there when it stops."""
    workdir = Path(tempfile.mkdtemp(prefix=f"c_app-load-{backend}-"))
    port = free_port()
    full_env = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(workers),
        "UPLOAD_DIR": str(workdir / "uploads"),
        "RATE_LIMIT_STREAM": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(root),
        **(env or {}),
    }
    schema = f"load_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        full_env["MEMORY_DB_PATH"] = str(workdir / "load.db")
    else:
        full_env.update(DATABASE_URL=PG_URL, DATABASE_SCHEMA=schema)
        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.close()
    command = [sys.executable]
    if profile is not None:
        command += ["-m", "pyinstrument", "-o", str(profile)]
    command += [str(root / "run_server.py")]
    process = start_server(command, full_env, workdir)
    server = Server(backend, f"http://127.0.0.1:{port}", process, workdir, schema)
    try:
        await wait_ready(server.base, process)
        yield server
    finally:
        stop_process(process, signal.SIGINT if profile is not None else signal.SIGTERM)
        if backend != "sqlite":
            conn = await asyncpg.connect(PG_URL)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


async def verify(server: Server, results: Results) -> list[str]:
    """The database check, run before the server's schema is dropped (inside `c_app_server`)."""
    if server.backend == "sqlite":
        return await verify_sqlite(server.workdir / "load.db", results)
    return await verify_postgres(server.schema, results)


@dataclass
class Drive:
    seconds: float
    turns: int
    cpu_seconds: float
    latencies: list[float]
    first_bytes: list[float]

    @property
    def turns_per_s(self) -> float:
        return self.turns / self.seconds

    @property
    def cpu_ms_per_turn(self) -> float | None:
        return 1000 * self.cpu_seconds / self.turns if self.turns else None


async def drive(
    base: str,
    clients: int,
    duration: float,
    results: Results,
    *,
    tag: str = "",
    pid: int | None = None,
    sample: bool = False,
) -> Drive:
    """`clients` clients for `duration` seconds against `base`; the server's CPU time is read
    from `pid` (and its children) before and after, its RSS sampled when `sample`."""
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    before_turns, before_first = len(results.latencies), len(results.first_bytes)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=httpx.Timeout(120.0)) as http:
        cpu_before = cpu_seconds(pid) if pid is not None else 0.0
        started = time.monotonic()
        stop = asyncio.Event()
        sampler = (
            asyncio.create_task(sample_rss(pid, started, stop, results))
            if sample and pid is not None
            else None
        )
        deadline = started + duration
        await asyncio.gather(*(client_loop(http, i, deadline, results, tag=tag) for i in range(clients)))
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu_before if pid is not None else 0.0
        stop.set()
        if sampler is not None:
            await sampler
    latencies = results.latencies[before_turns:]
    return Drive(elapsed, len(latencies), cpu, latencies, results.first_bytes[before_first:])


async def run(
    backend: str,
    clients: int,
    duration: float,
    *,
    root: Path = ROOT,
    workers: int = 1,
    profile: Path | None = None,
    model_chunks: int = 0,
) -> dict[str, Any]:
    results = Results()
    async with AsyncExitStack() as stack:
        env = model_env(await stack.enter_async_context(standin_model(model_chunks))) if model_chunks else {}
        server = await stack.enter_async_context(
            c_app_server(backend, root=root, workers=workers, env=env, profile=profile)
        )
        run = await drive(server.base, clients, duration, results, pid=server.process.pid, sample=True)
        problems = await verify(server, results)
    turns = run.turns
    warm = [rss for t, rss in results.rss if t >= min(10.0, duration / 3)]
    mib = 1024 * 1024
    return {
        "backend": backend,
        "turn": f"model ({model_chunks} chunks)" if model_chunks else "offline responder",
        "root": str(root),
        "workers": workers,
        "clients": clients,
        "seconds": round(run.seconds, 1),
        "turns": turns,
        "turns_per_s": round(run.turns_per_s, 1),
        "cpu_ms_per_turn": round(run.cpu_ms_per_turn, 1) if run.cpu_ms_per_turn else None,
        "p50_ms": round(statistics.median(run.latencies) * 1000, 1) if turns else None,
        "p99_ms": round((percentile(run.latencies, 0.99) or 0) * 1000, 1) if turns else None,
        "first_byte_p50_ms": round(statistics.median(run.first_bytes) * 1000, 1) if turns else None,
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
        "server_log": str(server.workdir / "server.log"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=1, help="WORKERS of run_server.py")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose server to run")
    parser.add_argument(
        "--profile",
        type=Path,
        help="pyinstrument report of the server (one worker; the format by the suffix: .pyisession, .html, .txt)",
    )
    parser.add_argument(
        "--model-chunks",
        type=int,
        default=0,
        help="answer with the model: a stand-in streaming this many chunks (0: the offline responder)",
    )
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    failed = False
    for backend in backends:
        profile = args.profile.with_suffix(f".{backend}{args.profile.suffix}") if args.profile else None
        report = asyncio.run(
            run(
                backend,
                args.clients,
                args.duration,
                root=args.root.resolve(),
                workers=args.workers,
                profile=profile,
                model_chunks=args.model_chunks,
            )
        )
        print(json.dumps(report, ensure_ascii=False, indent=1), flush=True)
        failed |= bool(report["failed_turns"] or report["db_problems"] or not report["turns"])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
