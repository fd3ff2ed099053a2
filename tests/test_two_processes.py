"""Two server processes on one database: a write on A becomes searchable on B by itself.

Each process keeps its own in-memory search index and follows the `memory_changes` log. B is
polled (never a fixed sleep) until it shows the change; the generous DEADLINE only stops a broken
build from waiting forever. How fast B catches up (the target: within a second) is a figure
measured by bench/freshness.py, not asserted here, where a loaded machine would make it flaky.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from c_app.config import Settings
from c_app.db.engine import create_engine
from c_app.db.migrate import alembic_config

from .servers import free_port

DEADLINE = 15.0  # seconds: a bound for a broken build, far above the ~1 s the design aims at
START_TIMEOUT = 120.0  # generous: two interpreters load jieba on a shared 2-core machine
ADMIN_TOKEN = "two-process-admin-token"
USER = "replica-user"
_ENV_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


def server_env(database_settings: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """Only what the servers need: no stray DATABASE_URL or LLM key from the test's own environment."""
    env = {key: os.environ[key] for key in _ENV_PASSTHROUGH if key in os.environ}
    env.update({key.upper(): str(value) for key, value in database_settings.items()})
    env.update(
        UPLOAD_DIR=str(tmp_path / "uploads"),
        ADMIN_TOKEN=ADMIN_TOKEN,
        LOAD_SAMPLE_KB="false",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    return env


@contextmanager
def server_process(env: dict[str, str], cwd: Path, log: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "c_app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_ready(client: httpx.AsyncClient, base: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if (await client.get(f"{base}/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"server at {base} did not start:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
async def replicas(
    database_settings: dict[str, Any], tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    env = server_env(database_settings, tmp_path)
    with ExitStack() as stack:
        # A first, so the schema is migrated once; B then starts on the migrated database.
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        # Generous timeout: a server's first search loads jieba and the background statistics,
        # which takes seconds on a busy machine. Both are warmed here, outside any timed window.
        async with httpx.AsyncClient(timeout=60) as client:
            a = stack.enter_context(server_process(env, tmp_path, logs[0]))
            await wait_ready(client, a, logs[0])
            b = stack.enter_context(server_process(env, tmp_path, logs[1]))
            await wait_ready(client, b, logs[1])
            for base in (a, b):
                await retrieve(client, base, "预热")
            yield client, a, b


async def retrieve(client: httpx.AsyncClient, base: str, query: str) -> list[dict[str, Any]]:
    response = await client.post(
        f"{base}/api/v1/chat/memory/retrieve", json={"user_id": USER, "query": query, "limit": 5}
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]["memories"]


async def seen_on(
    client: httpx.AsyncClient,
    base: str,
    query: str,
    condition: Callable[[list[dict[str, Any]]], bool],
) -> list[dict[str, Any]]:
    """Poll `base` until `condition` holds for the query's hits (returned); fail after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while True:
        hits = await retrieve(client, base, query)
        if condition(hits):
            return hits
        assert time.monotonic() < deadline, f"not seen on the other replica after {DEADLINE}s: {hits}"
        await asyncio.sleep(0.02)


def has(memory_id: int, kind: str, text: str | None = None) -> Callable[[list[dict[str, Any]]], bool]:
    def check(hits: list[dict[str, Any]]) -> bool:
        return any(
            h["id"] == memory_id and h["type"] == kind and (text is None or text in h["content"])
            for h in hits
        )

    return check


def lacks(memory_id: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda hits: all(h["id"] != memory_id for h in hits)


async def test_private_memory_written_on_a_is_found_updated_and_deleted_on_b(
    replicas: tuple[httpx.AsyncClient, str, str],
) -> None:
    client, a, b = replicas
    query = "我的收货地址在哪里"
    # B builds (and caches) this user's private index before the write, so only the change log can
    # tell it about the new memory.
    assert await retrieve(client, b, query) == []

    response = await client.post(
        f"{a}/api/v1/chat/memory/add",
        json={"user_id": USER, "content": "我的收货地址是杭州市西湖区文三路100号", "metadata": {}},
    )
    assert response.status_code == 200, response.text
    memory_id = response.json()["data"]["memory_id"]
    await seen_on(client, b, query, has(memory_id, "private", "文三路100号"))

    response = await client.put(
        f"{a}/api/v1/chat/memory/private/{USER}/{memory_id}",
        json={"content": "我的收货地址改为上海市浦东新区世纪大道8号"},
    )
    assert response.status_code == 200, response.text
    await seen_on(client, b, query, has(memory_id, "private", "世纪大道8号"))

    response = await client.delete(f"{a}/api/v1/chat/memory/private/{USER}/{memory_id}")
    assert response.status_code == 200, response.text
    await seen_on(client, b, query, lacks(memory_id))


async def test_knowledge_entry_written_on_a_is_found_updated_and_deleted_on_b(
    replicas: tuple[httpx.AsyncClient, str, str],
) -> None:
    client, a, b = replicas
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    question = "量子保温杯怎么清洗"
    assert await retrieve(client, b, question) == []

    response = await client.post(
        f"{a}/api/v1/admin/knowledge",
        headers=admin,
        json={
            "question": question,
            "answer": "量子保温杯请用温水和软毛刷清洗，不要放进洗碗机。",
            "category": "售后",
        },
    )
    assert response.status_code == 200, response.text
    entry_id = response.json()["data"]["id"]
    await seen_on(client, b, question, has(entry_id, "public", "软毛刷"))

    new_question = "星空折叠伞可以机洗吗"
    response = await client.put(
        f"{a}/api/v1/admin/knowledge/{entry_id}",
        headers=admin,
        json={"question": new_question, "answer": "星空折叠伞不可机洗，请用湿布擦拭后晾干。"},
    )
    assert response.status_code == 200, response.text
    await seen_on(client, b, new_question, has(entry_id, "public", "湿布擦拭"))
    # B serves the new answer only: the old one is gone from every hit.
    assert not any("软毛刷" in h["content"] for h in await retrieve(client, b, question))

    response = await client.delete(f"{a}/api/v1/admin/knowledge/{entry_id}", headers=admin)
    assert response.status_code == 200, response.text
    await seen_on(client, b, new_question, lacks(entry_id))


async def test_run_server_workers_share_database_rate_limits_and_url_key(
    database_settings: dict[str, Any], tmp_path: Path
) -> None:
    """`WORKERS=2 python run_server.py`: two processes on one port. Turns on fresh connections (spread
    over both) are counted against one limit (Redis), stored once each in order, and an upload URL
    signed by one worker is accepted by the other."""
    import psutil

    from .utils import sse_data, upload_image

    port = free_port()
    env = server_env(database_settings, tmp_path)
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        WORKERS="2",
        AUTH_MODE="api_key",
        API_KEYS="workers-key",
        REDIS_URL="redis://127.0.0.1:6379/5",
        RATE_LIMIT_KEY_PREFIX=f"workers-{os.getpid()}-{time.monotonic_ns()}",
        RATE_LIMIT_STREAM="4/minute",
        RATE_LIMIT_ADDRESS_FACTOR="10",
    )
    log = tmp_path / "workers.log"
    server = start_run_server(env, tmp_path, log)
    base = f"http://127.0.0.1:{port}"
    # No keep-alive: every request on a new connection, which the kernel hands to either worker.
    fresh = httpx.Limits(max_keepalive_connections=0)
    headers = {"Authorization": "Bearer workers-key"}
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=fresh, headers=headers) as client:
            await wait_ready(client, base, log)
            deadline = time.monotonic() + START_TIMEOUT
            while len(psutil.Process(server.pid).children()) < 2:
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                await asyncio.sleep(0.1)
            for _ in range(4):  # every worker has started (each answers /health)
                await wait_ready(client, base, log)
            statuses = []
            for turn in range(6):
                body = {
                    "user_id": USER,
                    "session_id": "workers-s",
                    "message": {"role": "user", "content": f"你好{turn}"},
                }
                response = await client.post("/api/v1/chat/stream", json=body)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    assert sse_data(response.text)[-1] == "[DONE]"
            assert statuses == [200, 200, 200, 200, 429, 429]
            history = await client.get("/api/v1/chat/session/workers-s/messages", params={"limit": 50})
            assert history.status_code == 200, history.text
            messages = history.json()["messages"]
            assert [m["content"] for m in messages if m["role"] == "user"] == [f"你好{t}" for t in range(4)]
            assert [m["role"] for m in messages] == ["user", "assistant"] * 4
            url = await upload_image(client, user_id=USER, session_id="workers-s")
            assert "sig=" in url
            assert [(await client.get(url)).status_code for _ in range(8)] == [200] * 8
    finally:
        stop_server(server)


MIGRATE_ONCE = """
import asyncio, sys
from c_app.config import Settings
from c_app.db.engine import create_engine
from c_app.db.migrate import upgrade

async def main() -> None:
    engine = create_engine(Settings(_env_file=None))
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()

asyncio.run(main())
"""


async def test_processes_starting_together_migrate_a_fresh_database_once(
    database_settings: dict[str, Any], tmp_path: Path
) -> None:
    """`WORKERS=N` or replicas started at once on an empty database: every process's start-up
    migration succeeds (one migrates, the others wait and find the schema current), whose schema is
    the newest revision, created once."""
    env = server_env(database_settings, tmp_path)
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATE_ONCE,
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(4)
    ]
    outputs = [
        (await asyncio.wait_for(process.communicate(), START_TIMEOUT))[0].decode(errors="replace")
        for process in processes
    ]
    assert [process.returncode for process in processes] == [0] * 4, "\n".join(outputs)[-4000:]

    async def revisions() -> list[str]:
        engine = create_engine(Settings(_env_file=None, **database_settings))  # type: ignore[call-arg]
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())
        finally:
            await engine.dispose()

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert await revisions() == heads


def start_run_server(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """`python run_server.py` as configured by `env` (stop it with `stop_server`)."""
    script = Path(__file__).resolve().parent.parent / "run_server.py"
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, str(script)], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
