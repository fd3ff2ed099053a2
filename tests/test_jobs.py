"""Background jobs: large imports through the admin API, polled by id, surviving the process that
accepted them; on PostgreSQL (procrastinate) a job of a killed worker is taken by another process,
and a periodic job runs once per fleet per period.

What is asserted is what a client and the database see: status codes and envelopes, the job's
status and report, the entries stored (exactly once), procrastinate's own rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from c_app.db.memories import PUBLIC
from c_app.db.models import AuditEntry, BackgroundJob, Memory, MemoryVector
from c_app.services.jobs import interval_cron, libpq_url

from .conftest import BACKEND, PG_URL
from .servers import free_port
from .test_two_processes import server_env, wait_ready
from .utils import assert_envelope, count, rows

TOKEN = "jobs-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SUBMIT = "/api/v1/admin/knowledge/import-jobs"
DEADLINE = 60.0  # a bound for a broken build; jobs finish in well under a second here


def jsonl(n: int, *, prefix: str = "job") -> bytes:
    lines = [
        {
            "external_id": f"{prefix}-{i}",
            "question": f"第{i}号商品怎么退货",
            "answer": f"第{i}号商品七天内可退。",
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(line, ensure_ascii=False) for line in lines).encode()


async def submit(
    client: httpx.AsyncClient, data: bytes, name: str = "kb.jsonl", **form: str
) -> httpx.Response:
    return await client.post(SUBMIT, files={"file": (name, data)}, data=form, headers=ADMIN)


async def wait_status(
    client: httpx.AsyncClient, job_id: str, wanted: set[str], base: str = ""
) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        response = await client.get(f"{base}/api/v1/admin/jobs/{job_id}", headers=ADMIN)
        assert response.status_code == 200, response.text
        job = response.json()["data"]
        if job["status"] in wanted:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {DEADLINE}s"
        await asyncio.sleep(0.05)


# -- in one process ------------------------------------------------------------------------------


async def test_an_import_job_is_accepted_polled_and_done(start_app) -> None:
    app, client = await start_app(admin_token=TOKEN, load_sample_kb=False)
    response = await submit(client, jsonl(30))
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["success"], body["message"]) == (True, "导入任务已提交")
    job = body["data"]
    assert job["status"] in ("queued", "running", "succeeded") and job["kind"] == "knowledge.import"
    done = await wait_status(client, job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["result"]["created"] == 30 and done["result"]["failed"] == 0
    assert done["attempts"] == 1 and done["error"] is None and done["finished_at"] is not None
    assert await count(app, Memory, Memory.scope == PUBLIC) == 30
    [row] = await rows(app, BackgroundJob)
    assert row.payload is None  # the file is not kept once imported
    assert await count(app, AuditEntry, AuditEntry.action == "knowledge.import_job") == 1
    # The entries answer at once on this replica.
    hit = await client.post(
        "/api/v1/admin/knowledge/hit-test", json={"query": "第7号商品怎么退货"}, headers=ADMIN
    )
    assert hit.status_code == 200 and "第7号商品" in hit.text


async def test_bad_submissions_get_the_envelope_and_store_nothing(start_app) -> None:
    app, client = await start_app(admin_token=TOKEN, load_sample_kb=False)
    assert_envelope(await submit(client, b"x", "kb.exe"), 400)
    assert_envelope(await submit(client, b"x", "kb.txt", format="yaml"), 400)
    unauthorised = await client.post(SUBMIT, files={"file": ("kb.jsonl", b"{}")})
    assert_envelope(unauthorised, 401)
    assert await count(app, BackgroundJob) == 0
    assert_envelope(await client.get("/api/v1/admin/jobs/nope", headers=ADMIN), 404, message="任务不存在")
    assert_envelope(await client.get("/api/v1/admin/jobs/nope"), 401)


async def test_a_strict_import_with_a_bad_row_fails_and_imports_nothing(start_app) -> None:
    app, client = await start_app(admin_token=TOKEN, load_sample_kb=False)
    data = jsonl(3) + b'\n{"question": ""}\n'
    job = (await submit(client, data, strict="true")).json()["data"]
    done = await wait_status(client, job["id"], {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["error"] == "导入数据有误，未导入任何条目"
    assert done["result"]["failed"] == 1 and done["result"]["errors"][0]["line"] == 4
    assert await count(app, Memory, Memory.scope == PUBLIC) == 0
    not_utf8 = (await submit(client, "问题".encode("gbk"))).json()["data"]
    failed = await wait_status(client, not_utf8["id"], {"succeeded", "failed"})
    assert (failed["status"], failed["error"]) == ("failed", "文件不是 UTF-8 编码")


async def test_a_job_accepted_by_a_process_that_stopped_is_run_by_the_next(start_app) -> None:
    """In-process: A only accepts (JOBS_WORKER=false); B, started after the job was stored, runs it."""
    _, a = await start_app(admin_token=TOKEN, load_sample_kb=False, jobs_worker=False)
    job = (await submit(a, jsonl(12, prefix="later"))).json()["data"]
    assert (await wait_status(a, job["id"], {"queued"}))["status"] == "queued"
    app_b, b = await start_app(admin_token=TOKEN, load_sample_kb=False)
    done = await wait_status(b, job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded" and done["result"]["created"] == 12
    assert await count(app_b, Memory, Memory.scope == PUBLIC) == 12


def test_intervals_become_cron_steps() -> None:
    assert interval_cron(0.3) == "* * * * * */1"
    assert interval_cron(5) == "* * * * * */5"
    assert interval_cron(600) == "*/10 * * * *"
    assert interval_cron(3600) == "0 */1 * * *"
    assert interval_cron(2 * 86400) == "0 0 */2 * *"
    assert libpq_url("postgresql+asyncpg://u@h:5/db") == "postgresql://u@h:5/db"


# -- real processes ------------------------------------------------------------------------------


@contextmanager
def process(env: dict[str, str], cwd: Path, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "c_app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def public_entries(database_settings: dict[str, Any], tmp_path: Path) -> int:
    if BACKEND == "sqlite":
        import sqlite3

        with sqlite3.connect(database_settings["memory_db_path"]) as conn:
            return int(conn.execute("SELECT count(*) FROM memories WHERE scope = 'public'").fetchone()[0])
    conn = await asyncpg.connect(
        PG_URL, server_settings={"search_path": database_settings["database_schema"]}
    )
    try:
        return int(await conn.fetchval("SELECT count(*) FROM memories WHERE scope = 'public'"))
    finally:
        await conn.close()


async def test_a_queued_import_survives_the_kill_of_the_process_that_accepted_it(
    database_settings: dict[str, Any], tmp_path: Path
) -> None:
    env = {**server_env(database_settings, tmp_path), "ADMIN_TOKEN": TOKEN}
    async with httpx.AsyncClient(timeout=60) as client:
        with process({**env, "JOBS_WORKER": "false"}, tmp_path, tmp_path / "a.log") as (a, proc_a):
            await wait_ready(client, a, tmp_path / "a.log")
            response = await client.post(
                f"{a}{SUBMIT}", files={"file": ("kb.jsonl", jsonl(40, prefix="kill"))}, headers=ADMIN
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["data"]["id"]
            os.kill(proc_a.pid, signal.SIGKILL)
            proc_a.wait()
        with process(env, tmp_path, tmp_path / "b.log") as (b, _):
            await wait_ready(client, b, tmp_path / "b.log")
            done = await wait_status(client, job_id, {"succeeded", "failed"}, base=b)
    assert done["status"] == "succeeded", done
    assert done["result"]["created"] == 40
    assert await public_entries(database_settings, tmp_path) == 40


@pytest.mark.skipif(BACKEND != "postgresql", reason="a worker's heartbeat and recovery are procrastinate's")
async def test_a_job_running_when_its_worker_is_killed_is_finished_by_another_exactly_once(
    database_settings: dict[str, Any], tmp_path: Path
) -> None:
    n = 5_000  # long enough (a second or more) to be caught running
    env = {**server_env(database_settings, tmp_path), "ADMIN_TOKEN": TOKEN, "JOBS_STALLED_AFTER_SECONDS": "2"}
    async with httpx.AsyncClient(timeout=60) as client:
        with process(env, tmp_path, tmp_path / "a.log") as (a, proc_a):
            await wait_ready(client, a, tmp_path / "a.log")
            response = await client.post(
                f"{a}{SUBMIT}", files={"file": ("kb.jsonl", jsonl(n, prefix="big"))}, headers=ADMIN
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["data"]["id"]
            running = await wait_status(client, job_id, {"running", "succeeded"}, base=a)
            if running["status"] == "succeeded":
                pytest.skip("the import finished before it could be interrupted")
            os.kill(proc_a.pid, signal.SIGKILL)
            proc_a.wait()
        with process(env, tmp_path, tmp_path / "b.log") as (b, _):
            await wait_ready(client, b, tmp_path / "b.log")
            done = await wait_status(client, job_id, {"succeeded", "failed"}, base=b)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["result"]["created"] + done["result"]["updated"] == n
    assert await public_entries(database_settings, tmp_path) == n  # matched on external_id: none twice


@pytest.mark.skipif(BACKEND != "postgresql", reason="procrastinate's periodic jobs (SQLite: one process)")
async def test_a_periodic_job_runs_once_per_fleet_per_period(start_app, database_settings) -> None:
    settings = {"load_sample_kb": False, "retention_days": 30, "retention_interval_seconds": 1}
    for _ in range(2):  # two replicas, each with its worker (and its periodic deferrer)
        await start_app(**settings)
    conn = await asyncpg.connect(
        PG_URL, server_settings={"search_path": database_settings["database_schema"]}
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            done = await conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'c_app.retention' "
                "AND status = 'succeeded'"
            )
            if done >= 3:
                break
            assert time.monotonic() < deadline, "no periodic retention runs"
            await asyncio.sleep(0.05)
        # A periodic job carries the period it was deferred for (its `timestamp` argument).
        jobs, periods = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT args->>'timestamp') FROM procrastinate_jobs "
            "WHERE task_name = 'c_app.retention'"
        )
    finally:
        await conn.close()
    # One job per period, whichever replica deferred it: never one per replica.
    assert jobs == periods >= 3


@pytest.mark.skipif(BACKEND != "postgresql", reason="SQLite's one process embeds its own backlog")
async def test_the_embedding_backfill_of_replicas_starting_together_embeds_each_entry_once(
    start_app, standin
) -> None:
    from .test_dense import dense_settings

    # No embeddings endpoint (and no worker): entries without vectors.
    seeder, _ = await start_app(load_sample_kb=False, jobs_worker=False)
    entries = [
        {"external_id": f"bf-{i}", "question": f"第{i}个问题怎么办", "answer": f"第{i}个回答。"}
        for i in range(40)
    ]
    await seeder.state.services.knowledge.upsert(entries)
    replicas = [await start_app(**dense_settings(standin)) for _ in range(2)]
    for app, _ in replicas:
        dense = app.state.services.sync.dense
        dense.follow_interval = 0.05
        await asyncio.wait_for(dense.drain(), DEADLINE)
        assert len(dense.store) == len(entries)  # every vector, on both replicas
    texts = [f"第{i}个问题怎么办" for i in range(40)]
    assert sorted(standin.embedding_inputs) == sorted(texts)  # each embedded once for the fleet
    assert await count(seeder, MemoryVector) == len(entries)
