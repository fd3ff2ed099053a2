"""The fleet, natively: three app processes behind Debian's nginx (deploy/nginx.conf), on
PostgreSQL and Redis, as compose.yaml runs them in containers.

Through the load balancer: a customer's turns land on different replicas and the history stays
whole; a knowledge-base edit on one replica is found on the others; rate limits hold fleet-wide;
a replica killed with SIGKILL mid-stream loses only that stream (its question is stored); a
rolling restart (SIGTERM each replica in turn, under load) fails no turn and stores every
acknowledged message exactly once. The destructive cases run last, the SIGKILL the very last.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from .conftest import BACKEND, PG_URL
from .fleet import Replica, nginx_binary, nginx_in_front, replica_env, warm
from .llm_standin import StandIn

pytestmark = pytest.mark.skipif(BACKEND != "postgresql", reason="a fleet runs on PostgreSQL (C_APP_TEST_DB)")

REDIS_URL = "redis://127.0.0.1:6379/11"
ADMIN_TOKEN = "fleet-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STREAM_LIMIT = 4  # turns per user per minute, counted fleet-wide in Redis
DEADLINE = 15.0  # seconds: a bound for a broken build only (bench figures say how fast)
STREAM = "/api/v1/chat/stream"
BUS_MODULES = ("c_app.bus", "c_app.services.bus", "c_app.services.event_bus")


@dataclass
class Fleet:
    url: str  # nginx
    replicas: list[Replica]
    schema: str
    standin: StandIn
    names: list[str] = field(default_factory=list)

    def by_name(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)


async def _schema(sql: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _wait_all(replicas: list[Replica]) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(r.wait_ready(client) for r in replicas))


async def _warm(replicas: list[Replica]) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        await warm(client, replicas)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed and apt-get could not install it")
    tmp_path: Path = tmp_path_factory.mktemp("fleet")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_schema(f'CREATE SCHEMA "{schema}"'))
    standin = StandIn()
    replicas: list[Replica] = []
    try:
        with standin.serving():
            env = replica_env(
                {"database_url": PG_URL, "database_schema": schema},
                tmp_path,
                ADMIN_TOKEN=ADMIN_TOKEN,
                LLM_API_KEY="standin-key",
                LLM_BASE_URL=standin.base_url,
                REDIS_URL=REDIS_URL,
                RATE_LIMIT_KEY_PREFIX=f"fleet-{schema}",
                RATE_LIMIT_STREAM=f"{STREAM_LIMIT}/minute",
                # Every request reaches the replicas from nginx on 127.0.0.1 (X-Forwarded-For
                # names the client); the load below is many users from one address.
                RATE_LIMIT_ADDRESS_FACTOR="1000",
                SHUTDOWN_GRACE_SECONDS="20",
            )
            replicas = [Replica(f"r{i}", env, tmp_path) for i in (1, 2, 3)]
            replicas[0].start()  # first alone: it migrates the schema
            asyncio.run(_wait_all(replicas[:1]))
            for replica in replicas[1:]:
                replica.start()
            asyncio.run(_wait_all(replicas[1:]))
            asyncio.run(_warm(replicas))
            with nginx_in_front(binary, [r.port for r in replicas], tmp_path) as url:
                yield Fleet(url, replicas, schema, standin, [r.name for r in replicas])
    finally:
        for replica in replicas:
            replica.stop()
        asyncio.run(_schema(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as http:
        yield http


def body(text: str, user_id: str, session_id: str) -> dict[str, Any]:
    return {"user_id": user_id, "session_id": session_id, "message": {"role": "user", "content": text}}


@dataclass
class TurnResult:
    status: int
    replica: str
    events: list[tuple[str, dict[str, Any]]]

    @property
    def done(self) -> dict[str, Any] | None:
        return next((data for kind, data in self.events if kind == "done"), None)

    @property
    def text(self) -> str:
        return "".join(data["text"] for kind, data in self.events if kind == "delta")


async def turn(client: httpx.AsyncClient, base: str, text: str, user_id: str, session_id: str) -> TurnResult:
    """One turn with typed events; what came back."""
    events: list[tuple[str, dict[str, Any]]] = []
    url = f"{base}{STREAM}?events=typed"
    async with client.stream("POST", url, json=body(text, user_id, session_id)) as response:
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: ") :])))
        return TurnResult(response.status_code, response.headers.get("x-replica", ""), events)


async def stored(fleet: Fleet, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": fleet.schema})
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_a_customers_turns_land_on_different_replicas_and_history_stays_whole(
    fleet: Fleet, client: httpx.AsyncClient
) -> None:
    questions = ["你好", "退货要多久", "运费谁出", "谢谢"]
    served = []
    for question in questions:
        result = await turn(client, fleet.url, question, "fleet-history", "fleet-history-s")
        assert result.status == 200 and result.done is not None, result
        assert result.done["status"] == "complete"
        served.append(result.replica)
    assert len(set(served)) >= 2, served  # round robin across the replicas
    assert set(served) <= set(fleet.names)
    # The last replica's prompt held every earlier turn, whichever replica had answered it.
    prompt = [m.get("content") for m in fleet.standin.requests[-1]["messages"]]
    for question in questions:
        assert question in prompt, prompt
    response = await client.get(f"{fleet.url}/api/v1/chat/session/fleet-history-s/messages")
    assert response.status_code == 200, response.text
    messages = response.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * len(questions)
    assert [m["content"] for m in messages if m["role"] == "user"] == questions


async def retrieve(client: httpx.AsyncClient, base: str, query: str) -> list[dict[str, Any]]:
    response = await client.post(
        f"{base}/api/v1/chat/memory/retrieve", json={"user_id": "fleet-kb", "query": query, "limit": 5}
    )
    assert response.status_code == 200, response.text
    return list(response.json()["data"]["memories"])


async def test_a_knowledge_base_edit_on_one_replica_is_found_on_the_others(
    fleet: Fleet, client: httpx.AsyncClient
) -> None:
    question = "星际快递能送到火星吗"
    response = await client.post(
        f"{fleet.replicas[0].url}/api/v1/admin/knowledge",
        headers=ADMIN,
        json={"question": question, "answer": "星际快递暂不支持火星地址，敬请期待。", "category": "物流"},
    )
    assert response.status_code == 200, response.text
    entry_id = response.json()["data"]["id"]
    written = time.monotonic()
    lags = {}
    for other in fleet.replicas[1:]:
        while not any(h["id"] == entry_id for h in await retrieve(client, other.url, question)):
            assert time.monotonic() - written < DEADLINE, f"{other.name} never saw entry {entry_id}"
            await asyncio.sleep(0.02)
        lags[other.name] = time.monotonic() - written
    print(f"knowledge-base edit seen on the other replicas after {lags}")


async def test_rate_limits_hold_across_the_fleet(fleet: Fleet, client: httpx.AsyncClient) -> None:
    served = []
    for n in range(STREAM_LIMIT):
        result = await turn(client, fleet.url, f"第{n}个问题", "fleet-limited", f"fleet-limited-{n}")
        assert result.status == 200, result
        served.append(result.replica)
    assert len(set(served)) >= 2, served  # counted on more than one replica
    refused = await client.post(
        f"{fleet.url}{STREAM}", json=body("再问一次", "fleet-limited", "fleet-limited-x")
    )
    assert refused.status_code == 429, refused.text
    assert refused.json()["success"] is False and "retry-after" in refused.headers
    # The refused turn stored nothing.
    assert await stored(fleet, "SELECT id FROM messages WHERE session_id = $1", "fleet-limited-x") == []


@pytest.mark.skipif(
    not any(importlib.util.find_spec(m) for m in BUS_MODULES), reason="needs the event bus (issue 10 branch)"
)
async def test_a_stop_sent_to_any_replica_stops_the_turn(fleet: Fleet, client: httpx.AsyncClient) -> None:
    fleet.standin.script.append({"kind": "hang_after", "text": "正在查询", "chunk": 4})
    session = "fleet-stop"
    url = f"{fleet.url}{STREAM}?events=typed"
    events: list[tuple[str, dict[str, Any]]] = []
    async with client.stream("POST", url, json=body("查一下订单", "fleet-stop-user", session)) as response:
        runner = response.headers["x-replica"]
        other = next(r for r in fleet.replicas if r.name != runner)
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: ") :])))
                if kind == "delta":
                    stop = await client.post(f"{other.url}/api/v1/chat/session/{session}/stop")
                    assert stop.status_code == 200, stop.text
    assert events[-1][0] == "done" and events[-1][1]["status"] == "interrupted", events
    rows = await stored(fleet, "SELECT role, status FROM messages WHERE session_id = $1 ORDER BY id", session)
    assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"), ("assistant", "interrupted")]


async def test_a_rolling_restart_fails_no_turn_and_stores_each_message_once(
    fleet: Fleet, client: httpx.AsyncClient
) -> None:
    # Answers that take a while (about 0.3 s), so turns are in flight when each replica is told to stop.
    fleet.standin.script.extend(
        {"kind": "slow", "text": "好的，已为您处理完毕。", "chunk": 2, "delay": 0.05} for _ in range(2000)
    )
    results: list[tuple[str, TurnResult]] = []
    restarting = asyncio.Event()

    async def customer(worker: int) -> None:
        n = 0
        while not restarting.is_set() or n == 0:
            session = f"roll-{worker}-{n}"
            results.append(
                (session, await turn(client, fleet.url, f"滚动重启 {worker}-{n}", session, session))
            )
            n += 1
            await asyncio.sleep(0.05)  # bounded load: two customers, a turn each every ~0.4 s

    load = [asyncio.create_task(customer(w)) for w in range(2)]
    try:
        for replica in fleet.replicas:
            replica.signal(signal.SIGTERM)
            assert await replica.exited() == -signal.SIGTERM
            replica.start()
            await replica.wait_ready(client)
    finally:
        restarting.set()
        await asyncio.gather(*load)
        fleet.standin.script.clear()
    failed = [
        (s, r) for s, r in results if r.status != 200 or r.done is None or r.done["status"] != "complete"
    ]
    assert failed == [], failed[:3]
    assert len(results) >= 10, len(results)
    assert {r.replica for _, r in results} == set(fleet.names)
    rows = await stored(
        fleet,
        "SELECT session_id, role, count(*) AS n FROM messages WHERE session_id LIKE 'roll-%' "
        "GROUP BY session_id, role",
    )
    counts = {(r["session_id"], r["role"]): r["n"] for r in rows}
    for session, result in results:
        assert counts.get((session, "user")) == 1, session
        assert counts.get((session, "assistant")) == 1, session
        assert result.done is not None and isinstance(result.done["message_id"], int)
    assert len(counts) == 2 * len(results)  # nothing stored that was not acknowledged
    print(f"rolling restart: {len(results)} turns, none failed")


async def test_a_replica_killed_mid_stream_loses_only_that_stream(
    fleet: Fleet, client: httpx.AsyncClient
) -> None:
    fleet.standin.script.append({"kind": "hang_after", "text": "正在为您", "chunk": 4})
    session = "fleet-killed"
    url = f"{fleet.url}{STREAM}?events=typed"
    got_delta = False
    with pytest.raises(httpx.HTTPError):  # the stream breaks off: no `done`
        async with client.stream("POST", url, json=body("我的订单到哪了", "fleet-kill", session)) as response:
            victim = fleet.by_name(response.headers["x-replica"])
            async for line in response.aiter_lines():
                if line.startswith("data: ") and not got_delta:
                    got_delta = True
                    victim.signal(signal.SIGKILL)
                assert "event: done" not in line
    assert got_delta
    assert await victim.exited() == -signal.SIGKILL
    # Its question was stored before the stream began; the answer died with the process.
    rows = await stored(
        fleet, "SELECT role, content FROM messages WHERE session_id = $1 ORDER BY id", session
    )
    assert [(r["role"], r["content"]) for r in rows] == [("user", "我的订单到哪了")]
    # The fleet goes on: every turn is answered, by the replicas still up.
    for n in range(4):
        result = await turn(client, fleet.url, "还在吗", f"fleet-after-kill-{n}", f"fleet-after-kill-{n}")
        assert result.status == 200 and result.done is not None and result.done["status"] == "complete"
        assert result.replica != victim.name
