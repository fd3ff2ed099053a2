"""The database goes away: 503 in the envelope while it is gone, recovery by itself, nothing acknowledged lost.

- PostgreSQL: the machine's shared server must not be stopped, so the app reaches it through a TCP
  proxy run by the test; killing the proxy (and every connection through it) is the outage.
- SQLite: the tests run as root, and root writes through `chmod a-w`, so "unwritable" is made with
  a lock instead: another connection holds `BEGIN EXCLUSIVE`, writers give up after the busy
  timeout (SQLITE_BUSY, the error a full disk or read-only mount also surfaces as OperationalError),
  readers carry on (WAL).
- The model hanging, failing or cutting its stream is covered in tests/test_llm.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import asyncpg
import pytest

from c_app.db.models import ChatSession, Message

from .conftest import BACKEND, PG_URL
from .utils import answer_text, assert_envelope, chat_body, count


class TcpProxy:
    """Forwards a loopback port to PostgreSQL; `stop` drops the port and every open connection."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()
        self.writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(source, sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            sink.transport.abort()
            self.writers.discard(sink)


async def turn(client: Any, label: str) -> Any:
    return await client.post(
        "/api/v1/chat/stream", json=chat_body(f"退货政策 {label}", user_id="u", session_id=f"s-{label}")
    )


def assert_unavailable(response: Any) -> None:
    body = assert_envelope(response, 503, "服务暂时不可用，请稍后重试", "ServiceUnavailable")
    assert "details" not in body["error"]
    assert response.headers["Retry-After"]


@pytest.mark.skipif(BACKEND != "postgresql", reason="PostgreSQL outage (C_APP_TEST_DB=postgresql)")
async def test_postgresql_outage_and_recovery(start_app: Any, database_settings: dict[str, Any]) -> None:
    proxy = TcpProxy()
    await proxy.start()
    try:
        url = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        _app, client = await start_app(database_url=url)
        acknowledged: list[str] = []
        for i in range(4):
            response = await turn(client, f"before-{i}")
            assert response.status_code == 200 and answer_text(response.text)
            acknowledged.append(f"before-{i}")

        await proxy.stop()
        refused = []
        for i in range(3):
            response = await turn(client, f"down-{i}")
            assert_unavailable(response)
            refused.append(f"down-{i}")
        assert_unavailable(await client.get("/api/v1/chat/sessions/u"))
        assert (await client.get("/api/v1/chat/health")).status_code == 503

        await proxy.start()  # the same port: the service must find its database again by itself
        for i in range(4):
            response = await turn(client, f"after-{i}")
            assert response.status_code == 200, response.text
            acknowledged.append(f"after-{i}")
        assert (await client.get("/api/v1/chat/health")).status_code == 200
    finally:
        await proxy.stop()

    conn = await asyncpg.connect(
        PG_URL, server_settings={"search_path": database_settings["database_schema"]}
    )
    try:
        for label in acknowledged:
            rows = await conn.fetch(
                "SELECT role FROM messages WHERE session_id = $1 ORDER BY id", f"s-{label}"
            )
            assert [r["role"] for r in rows] == ["user", "assistant"], label
            stored = await conn.fetchval(
                "SELECT message_count FROM chat_sessions WHERE id = $1", f"s-{label}"
            )
            assert stored == 2, label
        for label in refused:
            assert (
                await conn.fetchval("SELECT count(*) FROM messages WHERE session_id = $1", f"s-{label}") == 0
            )
    finally:
        await conn.close()


@pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite write outage (the default backend)")
async def test_sqlite_unwritable_then_writable_again(start_app: Any) -> None:
    app, client = await start_app(sqlite_busy_timeout_ms=200)
    first = await turn(client, "before")
    assert first.status_code == 200

    blocker = sqlite3.connect(app.state.settings.memory_db_path, isolation_level=None, timeout=5)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        for label in ("locked-1", "locked-2"):
            assert_unavailable(await turn(client, label))
        memory = await client.post("/api/v1/chat/memory/add", json={"user_id": "u", "content": "常住上海"})
        assert_unavailable(memory)
        # Reads carry on.
        session = await client.get("/api/v1/chat/session/s-before")
        assert session.status_code == 200 and session.json()["message_count"] == 2
        assert (await client.get("/api/v1/chat/sessions/u")).status_code == 200
    finally:
        blocker.rollback()
        blocker.close()

    after = await turn(client, "after")
    assert after.status_code == 200 and answer_text(after.text)
    for label in ("before", "after"):
        assert await count(app, Message, Message.session_id == f"s-{label}") == 2
        rows = await count(app, ChatSession, ChatSession.id == f"s-{label}", ChatSession.message_count == 2)
        assert rows == 1
    for label in ("locked-1", "locked-2"):
        assert await count(app, Message, Message.session_id == f"s-{label}") == 0
