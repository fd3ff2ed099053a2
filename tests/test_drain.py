"""Readiness and graceful drain: GET /ready, and SIGTERM on a real server process.

On SIGTERM a replica is not ready at once and refuses new turns (503, the seed's envelope), lets
a stream in flight finish within SHUTDOWN_GRACE_SECONDS, stores what is left as interrupted when
the grace is over, and exits; Ctrl-C (SIGINT) still stops it as uvicorn does.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from c_app.db.models import Message
from c_app.services.chat_service import DRAINING_MESSAGE

from .conftest import AppFactory
from .fleet import Replica, replica_env
from .llm_standin import StandIn
from .servers import free_port
from .utils import assert_envelope, chat_body, rows

STREAM = "/api/v1/chat/stream"


async def test_ready_reports_database_redis_and_index_and_names_the_replica(start_app: AppFactory) -> None:
    _, client = await start_app(replica_id="replica-7", redis_url="redis://127.0.0.1:6379/9")
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    assert response.headers["x-replica"] == "replica-7"
    assert response.json() == {
        "status": "ready",
        "replica": "replica-7",
        "checks": {"database": "healthy", "redis": "healthy", "index": "healthy", "draining": False},
    }
    # Every answer names the replica, errors included.
    assert (await client.get("/api/v1/chat/session/none")).headers["x-replica"] == "replica-7"


async def test_ready_is_503_when_redis_is_down_and_health_stays_200(start_app: AppFactory) -> None:
    _, client = await start_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "not_ready"
    assert response.json()["checks"]["redis"] == "unhealthy"
    assert (await client.get("/health")).status_code == 200  # liveness: the process answers


async def test_draining_replica_is_not_ready_and_refuses_new_turns(start_app: AppFactory) -> None:
    app, client = await start_app()
    assert (await client.get("/ready")).status_code == 200
    app.state.drain.begin()
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["draining"] is True
    refused = await client.post(STREAM, json=chat_body("退货政策是什么", session_id="drain-1"))
    assert_envelope(refused, 503, DRAINING_MESSAGE)
    assert refused.headers["retry-after"] == "1"
    assert await rows(app, Message) == []  # nothing stored for a refused turn
    assert (await client.get("/health")).status_code == 200


# -- real processes ------------------------------------------------------------------------------


@pytest.fixture
def replica(database_settings: dict[str, Any], tmp_path: Path, standin: StandIn) -> Callable[..., Replica]:
    started: list[Replica] = []

    def make(*, cli: bool = False, **extra: str) -> Replica:
        env = replica_env(
            database_settings, tmp_path, LLM_API_KEY="standin-key", LLM_BASE_URL=standin.base_url, **extra
        )
        node = Replica(f"r{len(started) + 1}", env, tmp_path, cli=cli)
        started.append(node)
        node.start()
        return node

    yield make  # type: ignore[misc]
    for node in started:
        node.stop()


async def typed_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    kind = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            yield kind, json.loads(line[len("data: ") :])


async def refused(client: httpx.AsyncClient, url: str) -> bool:
    try:
        await client.get(f"{url}/health")
    except httpx.ConnectError:
        return True
    return False


async def test_sigterm_lets_a_stream_in_flight_finish_then_exits(
    replica: Callable[..., Replica], standin: StandIn, start_app: AppFactory
) -> None:
    node = replica(SHUTDOWN_GRACE_SECONDS="60")
    text = "您好，这是一个在停机期间仍然完整送达的回答。"
    async with httpx.AsyncClient(timeout=60) as client:
        await node.wait_ready(client)
        standin.script.append({"kind": "slow", "text": text, "chunk": 1, "delay": 0.05})
        body = chat_body("请详细说明", user_id="drain-user", session_id="drain-finish")
        pieces: list[str] = []
        async with client.stream("POST", f"{node.url}{STREAM}?events=typed", json=body) as response:
            assert response.status_code == 200
            events = typed_events(response)
            async for kind, data in events:
                if kind == "delta":
                    pieces.append(data["text"])
                    break
            node.signal(signal.SIGTERM)
            async for kind, data in events:
                if kind == "delta":
                    pieces.append(data["text"])
                    # The replica stopped listening while this stream goes on.
                    if len(pieces) == 3:
                        while not await refused(client, node.url):
                            await asyncio.sleep(0.02)
                elif kind == "done":
                    assert data["status"] == "complete", data
    assert "".join(pieces) == text
    # uvicorn, once shut down, raises the signal it caught again: the status a SIGTERM'd process has.
    assert await node.exited() == -signal.SIGTERM
    app, _ = await start_app(load_sample_kb=False)
    stored = await rows(app, Message, Message.session_id == "drain-finish")
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "complete")]
    assert stored[1].content == text


async def test_sigterm_stores_a_stream_still_running_after_the_grace_as_interrupted(
    replica: Callable[..., Replica], standin: StandIn, start_app: AppFactory
) -> None:
    node = replica(SHUTDOWN_GRACE_SECONDS="1")
    async with httpx.AsyncClient(timeout=60) as client:
        await node.wait_ready(client)
        standin.script.append({"kind": "hang_after", "text": "部分回答", "chunk": 4})
        body = chat_body("请详细说明", user_id="drain-user", session_id="drain-cut")
        seen: list[tuple[str, dict[str, Any]]] = []
        async with client.stream("POST", f"{node.url}{STREAM}?events=typed", json=body) as response:
            assert response.status_code == 200
            async for kind, data in typed_events(response):
                seen.append((kind, data))
                if kind == "delta":
                    node.signal(signal.SIGTERM)
    assert [k for k, _ in seen] == ["delta", "done"], seen
    assert seen[-1][1]["status"] == "interrupted"
    assert await node.exited() == -signal.SIGTERM
    app, _ = await start_app(load_sample_kb=False)
    stored = await rows(app, Message, Message.session_id == "drain-cut")
    assert [(m.role, m.status, m.content) for m in stored] == [
        ("user", "complete", "请详细说明"),
        ("assistant", "interrupted", "部分回答"),
    ]


async def test_c_app_serve_answers_and_ctrl_c_still_stops_it(replica: Callable[..., Replica]) -> None:
    node = replica(cli=True)  # the container's entry point
    async with httpx.AsyncClient(timeout=60) as client:
        await node.wait_ready(client)
    node.signal(signal.SIGINT)
    assert await node.exited() == 0
