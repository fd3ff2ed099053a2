"""Retention (issue 14, item 5): what is older than RETENTION_DAYS is purged by a periodic job.

Services on the database of C_APP_TEST_DB, with a controlled clock: old conversations (by last
activity), chat memories and uploads (rows and files) go, recent ones stay; every transaction is a
bounded batch; a second replica's index drops the purged chat memory; exactly one replica runs at a
time (PostgreSQL: an advisory lock on two real connections; SQLite: the lease row), a crashed
holder's lock lapses; nothing runs without RETENTION_DAYS; the loop outlives a failed run.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select, update

from c_app.config import Settings
from c_app.container import Services, build_services
from c_app.db import retention as repo
from c_app.db.memories import CHAT
from c_app.db.models import ChatSession, Memory, Message, Ticket, Upload
from c_app.services import retention as retention_module
from c_app.services.retention import LEASE_TTL, RetentionRun, RetentionService

from .conftest import BACKEND, PG_URL
from .test_two_processes import server_env, server_process, wait_ready
from .utils import png_bytes

OLD = timedelta(days=40)  # past the 30 days kept
DAYS = 30


class Clock:
    """The services' clock, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class ImageFile:
    """What UploadService.save reads: a file name and an async read."""

    def __init__(self, data: bytes, filename: str = "photo.png") -> None:
        self.filename = filename
        self._buffer = io.BytesIO(data)

    async def read(self, size: int = -1) -> bytes:
        return self._buffer.read(size)


OpenServices = Callable[..., Awaitable[Services]]


@pytest.fixture
async def open_services(make_settings: Callable[..., Settings]) -> AsyncIterator[OpenServices]:
    """Services (a replica each call) on the test's database; closed after the test."""
    opened: list[Services] = []

    async def open_(clock: Clock | None = None, **overrides: Any) -> Services:
        # On PostgreSQL the purge is also a periodic job (tested in test_jobs.py): here only the
        # test's own runs may purge, or a job run on the fake clock would race them.
        defaults = {"load_sample_kb": False, "retention_days": DAYS, "jobs_worker": BACKEND != "postgresql"}
        settings = make_settings(**{**defaults, **overrides})
        services = build_services(settings)
        if clock is not None:
            services.retention = RetentionService(services.sync, services.uploads, settings, now=clock)
        opened.append(services)
        await services.start()
        if clock is not None:  # the clock starts when the services are ready: start-up takes no days
            clock.now = max(clock.now, datetime.now(UTC))
        return services

    try:
        yield open_
    finally:
        for services in opened:
            await services.aclose()


# -- seeding -------------------------------------------------------------------------------------


async def conversation(services: Services, session_id: str, user: str, texts: list[str]) -> None:
    await services.sessions.get_or_create(session_id, user)
    for text in texts:
        await services.sessions.add_message(session_id, user, role="user", content=text)


async def set_columns(services: Services, column: Any, keys: list[Any], **values: Any) -> None:
    async with services.db.transaction() as db:
        await db.execute(update(column.class_).where(column.in_(keys)).values(**values))


async def age_sessions(services: Services, ids: list[str], *, created: datetime, active: datetime) -> None:
    await set_columns(services, ChatSession.id, ids, created_at=created, last_activity_at=active)
    async with services.db.transaction() as db:
        await db.execute(update(Message).where(Message.session_id.in_(ids)).values(created_at=created))


async def remember(services: Services, user: str, question: str, answer: str, session_id: str) -> int:
    await services.memory.add_exchange(user, question, answer, session_id, grounded=True)
    async with services.db.read() as db:
        query = select(func.max(Memory.id)).where(Memory.scope == CHAT, Memory.owner_id == user)
        return int((await db.execute(query)).scalar_one())


async def upload(services: Services, user: str, session_id: str) -> Upload:
    return await services.uploads.save(ImageFile(png_bytes()), user_id=user, session_id=session_id)


async def ids_of(services: Services, column: Any, *where: Any) -> set[Any]:
    async with services.db.read() as db:
        return set((await db.execute(select(column).where(*where))).scalars())


async def seed_old(
    services: Services, clock: Clock, *, sessions: int, memories: int, uploads: int
) -> dict[str, Any]:
    """Old data only: `sessions` conversations of two messages, chat memories and uploads."""
    old = clock.now - OLD
    session_ids = [f"old-{i}" for i in range(sessions)]
    for sid in session_ids:
        await conversation(services, sid, "u-old", ["订单什么时候发货", "好的谢谢"])
    await age_sessions(services, session_ids, created=old, active=old)
    memory_ids = [await remember(services, "u-old", f"问题{i}", f"回答{i}", "old-0") for i in range(memories)]
    await set_columns(services, Memory.id, memory_ids, created_at=old)
    rows = [await upload(services, "u-old", "old-0") for _ in range(uploads)]
    await set_columns(services, Upload.id, [row.id for row in rows], created_at=old)
    return {"sessions": session_ids, "memories": memory_ids, "uploads": rows}


# -- what goes, what stays -----------------------------------------------------------------------


async def test_old_data_is_purged_and_recent_data_kept(open_services: OpenServices) -> None:
    clock = Clock()
    s = await open_services(clock)
    old, now = clock.now - OLD, clock.now
    await conversation(s, "old", "u1", ["我想退货", "退货地址是哪里"])
    await conversation(s, "recent", "u1", ["怎么开发票"])
    await conversation(s, "revived", "u1", ["很久以前的问题", "今天又来问"])  # old start, recent activity
    await age_sessions(s, ["old"], created=old, active=old)
    await age_sessions(s, ["revived"], created=old, active=now - timedelta(days=1))
    old_chat = await remember(s, "u1", "你们几点关门", "晚上十点。", "old")
    new_chat = await remember(s, "u1", "怎么开发票", "在订单页申请。", "recent")
    await set_columns(s, Memory.id, [old_chat], created_at=old)
    private = await s.memory.add_private("u1", "我的收货城市是杭州")
    await set_columns(s, Memory.id, [private.id], created_at=old)  # private memory: not retention's
    old_upload, new_upload = await upload(s, "u1", "old"), await upload(s, "u1", "recent")
    await set_columns(s, Upload.id, [old_upload.id], created_at=old)
    old_file, new_file = (
        s.uploads.directory / old_upload.stored_name,
        s.uploads.directory / new_upload.stored_name,
    )
    old_ticket = await s.tickets.record("u1", "old", "很久以前的留言 13812345678")
    new_ticket = await s.tickets.record("u1", "recent", "最近的留言")
    await set_columns(s, Ticket.id, [old_ticket.id], created_at=old, updated_at=old)

    run = await s.retention.run_once()

    assert run.skipped is None and not run.lock_lost
    assert run.counts() | {"transactions": 0} == {
        "sessions": 1,
        "messages": 2,
        "chat_memories": 1,
        "uploads": 1,
        "upload_files": 1,
        "tickets": 1,
        "transactions": 0,
    }
    assert await ids_of(s, ChatSession.id) == {"recent", "revived"}
    assert await ids_of(s, Message.session_id) == {"recent", "revived"}
    assert len(await ids_of(s, Message.id, Message.session_id == "revived")) == 2  # kept whole
    assert await ids_of(s, Memory.id, Memory.owner_id == "u1") == {new_chat, private.id}
    assert await ids_of(s, Upload.id) == {new_upload.id}
    assert await ids_of(s, Ticket.id) == {new_ticket.id}
    assert not old_file.exists() and new_file.exists()
    assert [hit.id for hit in await s.memory.search("u1", "几点关门", limit=5) if hit.scope == CHAT] == []

    again = await s.retention.run_once()  # nothing older is left
    assert again.skipped is None and not any(v for k, v in again.counts().items() if k != "transactions")


async def test_the_cut_off_follows_the_clock(open_services: OpenServices) -> None:
    clock = Clock()
    s = await open_services(clock)
    await conversation(s, "s1", "u1", ["你好"])
    assert (await s.retention.run_once()).sessions == 0
    clock.now += timedelta(days=DAYS, seconds=1)
    assert (await s.retention.run_once()).sessions == 1
    assert await ids_of(s, ChatSession.id) == set()


async def test_every_transaction_is_a_bounded_batch(open_services: OpenServices, monkeypatch) -> None:
    clock = Clock()
    batch = 3
    s = await open_services(clock, retention_batch_size=batch)
    seeded = await seed_old(s, clock, sessions=5, memories=7, uploads=7)
    await conversation(s, "recent", "u-new", ["最近的问题"])
    keep_chat = await remember(s, "u-new", "最近的问题", "最近的回答", "recent")
    keep_upload = await upload(s, "u-new", "recent")

    # Rows removed per transaction (a transaction starts with the lock check).
    transactions: list[list[int]] = []
    for cls in (repo.LeaseLock, repo.AdvisoryLock):

        async def keep(self: Any, db: Any, _original: Any = cls.keep) -> bool:
            transactions.append([])
            return await _original(self, db)

        monkeypatch.setattr(cls, "keep", keep)

    def counted(target: Any, name: str, size: Callable[..., int]) -> None:
        original = getattr(target, name)

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = await original(*args, **kwargs)
            transactions[-1].append(size(result, *args))
            return result

        monkeypatch.setattr(target, name, wrapped)

    counted(repo, "delete_messages_of_stale", lambda n, *_: n)
    counted(repo, "delete_empty_stale_sessions", lambda gone, *_: len(gone))
    counted(repo, "delete_uploads", lambda names, *_: len(names))
    counted(retention_module, "delete_memories", lambda _none, _db, refs: len(refs))

    run = await s.retention.run_once()

    assert (run.sessions, run.messages, run.chat_memories, run.uploads, run.upload_files) == (5, 10, 7, 7, 7)
    assert all(sum(rows) <= batch for rows in transactions), transactions
    total = 5 + 10 + 7 + 7
    assert sum(map(sum, transactions)) == total
    working = [rows for rows in transactions if sum(rows)]
    assert len(working) >= math.ceil(15 / batch) + 2 * math.ceil(7 / batch)
    assert run.transactions >= len(working)
    assert await ids_of(s, ChatSession.id) == {"recent"}
    assert await ids_of(s, Memory.id, Memory.scope == CHAT) == {keep_chat}
    assert await ids_of(s, Upload.id) == {keep_upload.id}
    assert not any(s.uploads.directory.joinpath(row.stored_name).exists() for row in seeded["uploads"])


async def test_purged_chat_memory_leaves_another_replicas_index(open_services: OpenServices) -> None:
    clock = Clock()
    a = await open_services(clock)
    b = await open_services(Clock())
    old_chat = await remember(a, "u1", "你们几点关门", "晚上十点。", "s1")
    new_chat = await remember(a, "u1", "可以开发票吗", "可以，在订单页申请。", "s1")
    await set_columns(a, Memory.id, [old_chat], created_at=clock.now - OLD)

    def chat_ids(hits: list[Any]) -> set[int]:
        return {hit.id for hit in hits if hit.scope == CHAT}

    # B has loaded u1's chat index (and holds the old exchange) before the purge.
    await b.sync.refresh(force=True)
    assert old_chat in chat_ids(await b.memory.search("u1", "几点关门", limit=5))

    assert (await a.retention.run_once()).chat_memories == 1

    await b.sync.refresh(force=True)
    assert old_chat not in chat_ids(await b.memory.search("u1", "几点关门", limit=5))
    assert new_chat in chat_ids(await b.memory.search("u1", "开发票", limit=5))
    assert old_chat not in chat_ids(await a.memory.search("u1", "几点关门", limit=5))


@pytest.mark.skipif(BACKEND != "postgresql", reason="SQLite serialises writers: the run waits its turn")
async def test_a_session_a_turn_is_writing_to_is_skipped_not_waited_for(open_services: OpenServices) -> None:
    clock = Clock()
    s = await open_services(clock)
    await seed_old(s, clock, sessions=2, memories=0, uploads=0)
    # A turn's message insert into old-0 is under way (its foreign key holds the session row's key-share lock).
    async with s.db.transaction() as turn:
        turn.add(Message(session_id="old-0", user_id="u-old", role="user", content="我又回来了"))
        await turn.flush()
        run = await asyncio.wait_for(s.retention.run_once(), 10)
        assert (run.sessions, run.messages) == (1, 2)  # old-1 only
        await turn.execute(
            update(ChatSession).where(ChatSession.id == "old-0").values(last_activity_at=clock.now)
        )
    assert await ids_of(s, ChatSession.id) == {"old-0"}
    assert len(await ids_of(s, Message.id, Message.session_id == "old-0")) == 3
    assert (await s.retention.run_once()).sessions == 0  # active again: kept


# -- one replica at a time -----------------------------------------------------------------------


def gate_lock_attempts(services: list[Services]) -> None:
    """Each service, once it has tried the lock, waits until all have tried: the winner still holds
    the lock while the others try (whatever the scheduling), so the outcome is deterministic."""
    tried = 0
    everyone = asyncio.Event()
    for s in services:
        make = s.retention._lock

        def lock(make: Any = make) -> Any:
            inner = make()
            original = inner.acquire

            async def acquire() -> bool:
                nonlocal tried
                got = await original()
                tried += 1
                if tried == len(services):
                    everyone.set()
                await asyncio.wait_for(everyone.wait(), 30)
                return got

            inner.acquire = acquire
            return inner

        s.retention._lock = lock  # type: ignore[method-assign]


async def test_two_replicas_at_once_one_runs_the_other_skips(open_services: OpenServices) -> None:
    clock = Clock()
    a = await open_services(clock, retention_batch_size=2)
    b = await open_services(clock, retention_batch_size=2)
    await seed_old(a, clock, sessions=4, memories=3, uploads=3)
    gate_lock_attempts([a, b])

    runs = await asyncio.gather(a.retention.run_once(), b.retention.run_once())

    assert sorted(str(run.skipped) for run in runs) == ["None", "locked"], runs
    (worker,) = [run for run in runs if run.skipped is None]
    assert (worker.sessions, worker.messages, worker.chat_memories, worker.uploads) == (4, 8, 3, 3)
    (idle,) = [run for run in runs if run.skipped]
    assert idle == RetentionRun(skipped="locked")
    assert await ids_of(a, ChatSession.id) == set()
    # Released: the next run, by either, gets the lock (and finds nothing).
    assert (await b.retention.run_once()).skipped is None
    assert (await a.retention.run_once()).skipped is None


@asynccontextmanager
async def held_elsewhere(services: Services, clock: Clock) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Another replica holds the lock; yields `crash()`, which makes that replica die."""
    if BACKEND == "sqlite":
        lease = repo.LeaseLock(services.db.sessionmaker, holder="crashed-replica", clock=clock, ttl=LEASE_TTL)
        assert await lease.acquire()

        async def lapse() -> None:  # it never renews: its lease lapses
            clock.now += LEASE_TTL + timedelta(seconds=1)

        yield lapse
        return
    schema = services.settings.database_schema
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema or "public"})
    try:
        taken = await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext(coalesce(current_schema(), '')))", repo.ADVISORY_CLASS
        )
        assert taken

        async def die() -> None:  # the process dies: its connection, and the session lock, go
            conn.terminate()

        yield die
    finally:
        if not conn.is_closed():
            conn.terminate()


async def test_a_crashed_holders_lock_lapses_and_is_taken_over(open_services: OpenServices) -> None:
    clock = Clock()
    s = await open_services(clock)
    await seed_old(s, clock, sessions=1, memories=1, uploads=1)
    async with held_elsewhere(s, clock) as crash:
        assert await s.retention.run_once() == RetentionRun(skipped="locked")
        assert await ids_of(s, ChatSession.id) == {"old-0"}
        await crash()
        deadline = time.monotonic() + 10  # PostgreSQL ends the dead session's backend asynchronously
        while (run := await s.retention.run_once()).skipped == "locked" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert run.skipped is None and run.sessions == 1 and run.uploads == 1
    assert await ids_of(s, ChatSession.id) == set()


@pytest.mark.skipif(BACKEND != "sqlite", reason="the lease is SQLite's lock")
async def test_a_lease_lost_part_way_rolls_the_batch_back_and_stops_the_run(
    open_services: OpenServices,
) -> None:
    clock = Clock()
    s = await open_services(clock, retention_batch_size=1)
    await seed_old(s, clock, sessions=3, memories=0, uploads=0)
    original = s.retention._pause
    pauses = 0

    async def pause(run: RetentionRun) -> None:
        nonlocal pauses
        await original(run)
        pauses += 1
        if pauses == 2:  # the run stalls past its lease, and another replica takes over
            clock.now += LEASE_TTL + timedelta(seconds=1)
            assert await repo.LeaseLock(
                s.db.sessionmaker, holder="other", clock=clock, ttl=LEASE_TTL
            ).acquire()

    s.retention._pause = pause  # type: ignore[method-assign]
    run = await s.retention.run_once()
    assert run.lock_lost
    assert run.messages == 2 and run.sessions == 0  # the third transaction never committed
    assert len(await ids_of(s, Message.id)) == 4


# -- off, and the loop ---------------------------------------------------------------------------


async def test_without_retention_days_nothing_runs(open_services: OpenServices) -> None:
    clock = Clock()
    s = await open_services(clock, retention_days=None, retention_interval_seconds=0.01)
    await seed_old(s, clock, sessions=1, memories=1, uploads=1)
    assert s.retention._task is None  # no loop started
    await asyncio.sleep(0.1)
    assert await s.retention.run_once() == RetentionRun(skipped="disabled")
    assert await ids_of(s, ChatSession.id) == {"old-0"}
    assert len(await ids_of(s, Memory.id, Memory.scope == CHAT)) == 1
    assert len(await ids_of(s, Upload.id)) == 1


@pytest.mark.skipif(
    BACKEND != "sqlite", reason="PostgreSQL runs the purge as a periodic job (test_jobs.py), not this loop"
)
async def test_the_loop_survives_a_failed_run_and_logs_counts_only(
    open_services: OpenServices, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="c_app.services.retention")
    clock = Clock()
    seeder = await open_services(clock, retention_days=None)  # the data is there before the loop starts
    await seed_old(seeder, clock, sessions=1, memories=1, uploads=1)
    settings = make_settings(load_sample_kb=False, retention_days=DAYS, retention_interval_seconds=0.05)
    s = build_services(settings)
    s.retention = RetentionService(s.sync, s.uploads, settings, now=clock)
    failures = 0
    original = s.retention._purge_sessions

    async def flaky(*args: Any) -> None:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("database went away")
        await original(*args)

    s.retention._purge_sessions = flaky  # type: ignore[method-assign]
    await s.start()
    try:
        deadline = time.monotonic() + 20

        def finished() -> bool:  # a whole run has ended (its line is logged at the end)
            return any(r.getMessage().startswith("retention run: removed 1 sessions") for r in caplog.records)

        while not finished() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await ids_of(s, ChatSession.id) == set()
        task = s.retention._task
        assert task is not None and not task.done()  # still looping
    finally:
        await s.aclose()
    assert s.retention._task is None and task.done()
    assert failures == 1
    assert "retention run failed" in caplog.text
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retention run:")]
    assert any(
        "removed 1 sessions, 2 messages, 1 chat memories, 1 uploads (1 files)" in line for line in lines
    )
    assert all(
        r.levelno == logging.INFO for r in caplog.records if r.getMessage().startswith("retention run:")
    )
    for content in ("订单什么时候发货", "问题0", "回答0", "u-old", "old-0"):
        assert content not in caplog.text


# -- two processes -------------------------------------------------------------------------------

_RUN_LINE = re.compile(
    r"retention run: removed (\d+) sessions, (\d+) messages, (\d+) chat memories, (\d+) uploads \((\d+) files\)"
)


async def test_two_server_processes_purge_the_data_exactly_once(
    open_services: OpenServices, database_settings: dict[str, Any], tmp_path: Path
) -> None:
    clock = Clock()
    seeder = await open_services(clock, retention_days=None)  # migrates the schema; runs nothing
    await seed_old(seeder, clock, sessions=6, memories=5, uploads=4)
    await conversation(seeder, "recent", "u-new", ["最近的问题"])
    env = server_env(database_settings, tmp_path)
    env.update(
        RETENTION_DAYS=str(DAYS), RETENTION_INTERVAL_SECONDS="0.3", RETENTION_BATCH_SIZE="2", LOG_LEVEL="INFO"
    )
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with ExitStack() as stack:
        async with httpx.AsyncClient(timeout=60) as client:
            bases = [stack.enter_context(server_process(env, tmp_path, log)) for log in logs]
            for base, log in zip(bases, logs, strict=True):
                await wait_ready(client, base, log)
        deadline = time.monotonic() + 60
        while await ids_of(seeder, ChatSession.id) != {"recent"} and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # several more intervals on both: nothing left, nothing twice
    texts = [log.read_text(errors="replace") for log in logs]
    assert await ids_of(seeder, ChatSession.id) == {"recent"}
    assert await ids_of(seeder, Memory.id, Memory.scope == CHAT) == set()
    assert await ids_of(seeder, Upload.id) == set()
    totals = [0] * 5
    for text in texts:
        assert "Traceback" not in text and " - ERROR - " not in text, text[-3000:]
        if BACKEND == "sqlite":
            assert "retention run" in text  # each process ran the job (or found it running)
        for match in _RUN_LINE.finditer(text):
            totals = [t + int(n) for t, n in zip(totals, match.groups(), strict=True)]
    # PostgreSQL: a periodic job of the job engine, each run taken by one of the two workers.
    assert any("retention run" in text for text in texts)
    assert totals == [6, 12, 5, 4, 4], texts
