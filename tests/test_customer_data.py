"""A customer's personal data: export as one archive, and erasure (issue 14, item 4).

The archive holds everything (json and upload bytes); the erasure removes everything, from every
route and from every replica's index, is idempotent, clears the customer's rate-limit counters,
and is safe while one of their answers is still streaming.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from c_app.config import Settings
from c_app.container import Services, build_services
from c_app.db.models import ChatSession, Memory, MemoryChange, Message, ModerationEvent, Ticket, Upload
from c_app.main import create_app
from c_app.schemas.customer import ChatMessage
from c_app.schemas.events import DeltaEvent, DoneEvent
from c_app.services.audit_service import AuditContext
from c_app.services.session_service import SessionGone

from .conftest import BACKEND
from .llm_standin import StandIn
from .servers import serve
from .utils import assert_envelope, chat_body, count, png_bytes, rows, uploaded

AUTH = {"Authorization": "Bearer t0k"}
CUSTOMERS = "/api/v1/admin/customers"
RETRIEVE = "/api/v1/chat/memory/retrieve"
SECRET_FACT = "我的会员卡号是 VIP-SECRET-20391"
CONTEXT = AuditContext(actor="admin", role="admin", address="127.0.0.1", request_id="test")
REDIS_URL = "redis://127.0.0.1:6379/0"
KEY = "sk-customer-data-test"
DATA_COUNTS = (
    "sessions",
    "messages",
    "private_memories",
    "chat_memories",
    "uploads",
    "upload_files",
    "moderation_events",
    "tickets",
)


@pytest.fixture
async def admin(start_app):
    app, client = await start_app(admin_token="t0k")
    return app, client


async def populate(
    app: Any, client: httpx.AsyncClient, user: str = "u1", session: str = "s1"
) -> dict[str, Any]:
    """Sessions with answered questions, a rating, a private fact, an upload, a sensitive-word event
    and a ticket (留言)."""
    for question in ("怎么退货", "买东西怎么开发票？"):
        response = await client.post(
            "/api/v1/chat/stream", json=chat_body(question, user_id=user, session_id=session)
        )
        assert response.status_code == 200, response.text
    await client.post("/api/v1/chat/stream", json=chat_body("你好", user_id=user, session_id=f"{session}-b"))
    history = (await client.get(f"/api/v1/chat/session/{session}/messages")).json()["messages"]
    answer_id = next(m["id"] for m in history if m["role"] == "assistant")
    rated = await client.post(
        f"/api/v1/chat/message/{answer_id}/feedback", json={"rating": "like", "comment": "清楚"}
    )
    assert rated.status_code == 200, rated.text
    added = await client.post(
        "/api/v1/chat/memory/add", json={"user_id": user, "content": f"{SECRET_FACT} ({user})"}
    )
    assert added.status_code == 200, added.text
    image = png_bytes(color=(1, 2, 3))
    upload = await uploaded(client, image, "收据.png", user_id=user, session_id=session)
    async with app.state.services.db.transaction() as db:
        db.add(
            ModerationEvent(user_id=user, session_id=session, direction="question", hits=1, words=["违禁词"])
        )
    await app.state.services.tickets.record(user, session, f"请回电 13812345678，{user}@example.com")
    return {"answer_id": answer_id, "upload": upload, "image": image}


def read_archive(response: httpx.Response) -> tuple[dict[str, Any], zipfile.ZipFile]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert int(response.headers["content-length"]) == len(response.content)
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    return json.loads(archive.read("customer.json")), archive


async def user_counts(app: Any, user: str) -> dict[str, int]:
    return {
        "sessions": await count(app, ChatSession, ChatSession.user_id == user),
        "messages": await count(app, Message, Message.user_id == user),
        "memories": await count(app, Memory, Memory.owner_id == user),
        "uploads": await count(app, Upload, Upload.user_id == user),
        "moderation_events": await count(app, ModerationEvent, ModerationEvent.user_id == user),
        "tickets": await count(app, Ticket, Ticket.user_id == user),
    }


# -- export ----------------------------------------------------------------------------------------


async def test_export_archive_holds_all_of_the_customers_data(admin) -> None:
    app, client = admin
    made = await populate(app, client)
    await populate(app, client, user="other", session="other-s")

    data, archive = read_archive(await client.get(f"{CUSTOMERS}/u1/export", headers=AUTH))

    assert data["format"] == "c_app.customer-export" and data["version"] == 1 and data["user_id"] == "u1"
    assert set(data) >= {
        "sessions",
        "messages",
        "private_memories",
        "chat_memories",
        "uploads",
        "moderation_events",
        "tickets",
        "counts",
        "exported_at",
    }
    [ticket] = data["tickets"]
    assert (ticket["session_id"], ticket["content"], ticket["phone"], ticket["email"], ticket["status"]) == (
        "s1",
        "请回电 13812345678，u1@example.com",
        "13812345678",
        "u1@example.com",
        "open",
    )
    assert data["not_yet_held"] == {}
    assert sorted(s["id"] for s in data["sessions"]) == ["s1", "s1-b"]
    assert len(data["messages"]) == 6  # three questions, three answers
    assert {m["session_id"] for m in data["messages"]} == {"s1", "s1-b"}
    rated = [m for m in data["messages"] if m["feedback"]]
    assert [(m["id"], m["feedback"]["rating"], m["feedback"]["comment"]) for m in rated] == [
        (made["answer_id"], "like", "清楚")
    ]
    assert [m["content"] for m in data["private_memories"]] == [f"{SECRET_FACT} (u1)"]
    assert len(data["chat_memories"]) == 3 and all(
        "怎么" in c["content"] or "你好" in c["content"] for c in data["chat_memories"]
    )
    [upload] = data["uploads"]
    assert upload["original_name"] == "收据.png" and upload["size"] == len(made["image"])
    assert upload["file"] == f"uploads/{made['upload']['filename']}"
    assert archive.read(upload["file"]) == made["image"]  # the file itself, byte for byte
    assert [(e["direction"], e["words"]) for e in data["moderation_events"]] == [("question", ["违禁词"])]
    assert data["counts"] == {
        "sessions": 2,
        "messages": 6,
        "private_memories": 1,
        "chat_memories": 3,
        "uploads": 1,
        "moderation_events": 1,
        "tickets": 1,
    }
    assert sorted(archive.namelist()) == ["customer.json", upload["file"]]
    assert "other" not in json.dumps(data, ensure_ascii=False)  # nobody else's data


async def test_export_of_an_unknown_customer_is_an_archive_of_empty_lists(admin) -> None:
    _app, client = admin
    data, archive = read_archive(await client.get(f"{CUSTOMERS}/nobody/export", headers=AUTH))
    for name in (
        "sessions",
        "messages",
        "private_memories",
        "chat_memories",
        "uploads",
        "moderation_events",
        "tickets",
    ):
        assert data[name] == [], name
    assert archive.namelist() == ["customer.json"]


async def test_export_streams_many_rows_in_batches(admin) -> None:
    app, client = admin
    services: Services = app.state.services
    await services.sessions.get_or_create("big", "heavy")
    for i in range(1203):  # more than two export batches
        await services.sessions.add_message("big", "heavy", role="user", content=f"消息 {i}")
    data, _ = read_archive(await client.get(f"{CUSTOMERS}/heavy/export", headers=AUTH))
    assert [m["content"] for m in data["messages"]] == [f"消息 {i}" for i in range(1203)]
    assert len({m["id"] for m in data["messages"]}) == 1203


# -- erasure ---------------------------------------------------------------------------------------


async def test_erase_removes_everything_and_nothing_is_retrievable_afterwards(admin, tmp_path: Path) -> None:
    app, client = admin
    made = await populate(app, client)
    await populate(app, client, user="other", session="other-s")
    other_before = await user_counts(app, "other")
    stored = tmp_path / "uploads" / made["upload"]["filename"]
    assert stored.is_file()

    response = await client.delete(f"{CUSTOMERS}/u1", headers=AUTH)

    assert response.status_code == 200, response.text
    counts = response.json()["data"]
    assert counts["user_id"] == "u1"
    assert {name: counts[name] for name in DATA_COUNTS} == {
        "sessions": 2,
        "messages": 6,
        "private_memories": 1,
        "chat_memories": 3,
        "uploads": 1,
        "upload_files": 1,
        "moderation_events": 1,
        "tickets": 1,
    }
    assert await user_counts(app, "u1") == dict.fromkeys(other_before, 0)
    assert await user_counts(app, "other") == other_before  # nobody else's data went
    repeated = await client.delete(f"{CUSTOMERS}/u1", headers=AUTH)  # idempotent: nothing left to remove
    assert repeated.status_code == 200
    assert all(value == 0 for key, value in repeated.json()["data"].items() if key != "user_id"), (
        repeated.json()
    )
    assert not stored.exists()
    # Every removed memory was logged, so every replica's index drops it.
    assert await count(app, MemoryChange, MemoryChange.owner_id == "u1") >= 2 * (1 + 3)

    # Nothing about them through any route.
    assert_envelope(await client.get("/api/v1/chat/session/s1/messages"), 404)
    assert_envelope(await client.get("/api/v1/chat/session/s1"), 404)
    assert (await client.get("/api/v1/chat/sessions/u1")).json() == []
    private = await client.get("/api/v1/chat/memory/private/u1")
    assert private.json()["data"]["total"] == 0
    for query in ("会员卡号", "怎么退货", "开发票"):
        found = (await client.post(RETRIEVE, json={"user_id": "u1", "query": query, "limit": 10})).json()[
            "data"
        ]
        assert [m for m in found["memories"] if m["type"] != "public"] == [], query
    name = made["upload"]["filename"]
    assert_envelope(await client.get(f"/static/uploads/{name}"), 404)
    assert_envelope(await client.get(f"/download/{name}"), 404)
    data, _ = read_archive(await client.get(f"{CUSTOMERS}/u1/export", headers=AUTH))
    assert all(
        data[k] == []
        for k in ("sessions", "messages", "private_memories", "chat_memories", "uploads", "tickets")
    )

    # The other customer still finds their own.
    found = (await client.post(RETRIEVE, json={"user_id": "other", "query": "会员卡号", "limit": 10})).json()
    assert any(m["type"] == "private" for m in found["data"]["memories"])

    # Reading through the routes above counted in u1's rate limits and the export was audited under
    # the id again: a repeat erases those, and no data.
    again = await client.delete(f"{CUSTOMERS}/u1", headers=AUTH)
    assert again.status_code == 200
    assert all(again.json()["data"][name] == 0 for name in DATA_COUNTS)


async def test_erasing_an_unknown_customer_removes_nothing(admin) -> None:
    app, client = admin
    await populate(app, client, user="other", session="other-s")
    before = await user_counts(app, "other")
    response = await client.delete(f"{CUSTOMERS}/nobody", headers=AUTH)
    assert response.status_code == 200, response.text
    assert all(value == 0 for key, value in response.json()["data"].items() if key != "user_id")
    assert await user_counts(app, "other") == before


async def test_bad_customer_ids_get_the_error_envelope(admin) -> None:
    _app, client = admin
    assert_envelope(await client.delete(f"{CUSTOMERS}/%20", headers=AUTH), 400, "用户ID不能为空")
    assert_envelope(await client.get(f"{CUSTOMERS}/%20/export", headers=AUTH), 400)
    assert_envelope(await client.delete(f"{CUSTOMERS}/a%01b", headers=AUTH), 422)
    assert_envelope(await client.get(f"{CUSTOMERS}/{'x' * 129}/export", headers=AUTH), 422)


async def test_customer_routes_refuse_without_the_admin_token(start_app) -> None:
    _app, client = await start_app(admin_token="t0k")
    for method, path in (("GET", f"{CUSTOMERS}/u1/export"), ("DELETE", f"{CUSTOMERS}/u1")):
        assert_envelope(await client.request(method, path), 401)
        assert_envelope(await client.request(method, path, headers={"Authorization": "Bearer nope"}), 401)
    _app, client = await start_app()  # ADMIN_TOKEN unset: admin routes are off
    assert_envelope(await client.delete(f"{CUSTOMERS}/u1", headers=AUTH), 401)


@pytest.fixture(params=["memory", "redis"])
def storage(request: Any) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    return {"redis_url": REDIS_URL, "rate_limit_key_prefix": f"test-{uuid.uuid4().hex}"}


async def test_erase_clears_the_customers_rate_limit_counters(start_app, storage: dict[str, Any]) -> None:
    _app, client = await start_app(admin_token="t0k", rate_limit_stream="2/minute", **storage)

    async def stream() -> httpx.Response:
        return await client.post("/api/v1/chat/stream", json=chat_body("你好", user_id="u1", session_id="s1"))

    assert [(await stream()).status_code for _ in range(3)] == [200, 200, 429]
    erased = await client.delete(f"{CUSTOMERS}/u1", headers=AUTH)
    assert erased.json()["data"]["rate_limit_keys"] == 1
    assert (await stream()).status_code == 200
    again = await client.delete(f"{CUSTOMERS}/u1", headers=AUTH)
    assert again.json()["data"]["rate_limit_keys"] == 1  # the stream just counted again
    assert (await client.delete(f"{CUSTOMERS}/u1", headers=AUTH)).json()["data"]["rate_limit_keys"] == 0


# -- replicas and answers in flight ----------------------------------------------------------------


@pytest.fixture
async def replicas(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Services, Services]]:
    settings = make_settings(load_sample_kb=False)
    first, second = build_services(settings), build_services(settings)
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.aclose()
        await second.aclose()


def private_or_chat(hits: list[Any]) -> list[Any]:
    return [hit for hit in hits if hit.scope != "public"]


async def test_an_erased_customers_facts_are_found_in_no_process(replicas) -> None:
    a, b = replicas
    await a.memory.add_private("u1", SECRET_FACT)
    await a.memory.add_exchange("u1", "你们几点关门", "晚上十点。", "s1", grounded=True)
    await b.memory.add_private("u2", SECRET_FACT)
    # Both processes hold u1's indexes.
    for services in (a, b):
        assert len(private_or_chat(await services.memory.search("u1", "会员卡号", limit=5))) == 1
        assert len(private_or_chat(await services.memory.search("u1", "几点关门", limit=5))) == 1

    erasure = await b.customer_data.erase("u1", CONTEXT)
    assert erasure.counts["private_memories"] == 1 and erasure.counts["chat_memories"] == 1

    for services in (a, b):
        await services.sync.refresh(force=True)
        for query in ("会员卡号", "VIP-SECRET-20391", "几点关门"):
            assert private_or_chat(await services.memory.search("u1", query, limit=5)) == [], query
    # Another customer's identical fact stays, in both.
    for services in (a, b):
        assert len(private_or_chat(await services.memory.search("u2", "会员卡号", limit=5))) == 1


@pytest.fixture
async def llm_replicas(make_settings, standin: StandIn) -> AsyncIterator[tuple[Services, Services, StandIn]]:
    settings = make_settings(
        load_sample_kb=False, llm_api_key=KEY, llm_base_url=standin.base_url, llm_timeout=30
    )
    first, second = build_services(settings), build_services(settings)
    await first.start()
    await second.start()
    try:
        yield first, second, standin
    finally:
        await first.aclose()
        await second.aclose()


async def test_an_answer_finishing_after_the_erase_stores_nothing(llm_replicas) -> None:
    """The answer streams in one process while another erases the customer: when it ends
    (complete), neither the answer nor the exchange comes back."""
    a, b, standin = llm_replicas
    standin.script.append({"kind": "slow", "text": "这是一个慢慢生成的回答。" * 4, "chunk": 2, "delay": 0.02})
    turn = await a.chat.prepare(user_id="u1", session_id="s1", message=ChatMessage(content="讲讲退货流程"))
    events = []
    erased = None
    async for event in a.chat.answer(turn):
        events.append(event)
        if isinstance(event, DeltaEvent) and erased is None:
            erased = await b.customer_data.erase("u1", CONTEXT)
    assert erased is not None and erased.counts["messages"] == 1 and erased.counts["sessions"] == 1
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.status == "complete" and done.message_id is None
    async with a.db.read() as db:
        from sqlalchemy import func, select

        for model, column in (
            (Message, Message.user_id),
            (ChatSession, ChatSession.user_id),
            (Memory, Memory.owner_id),
        ):
            assert (
                await db.execute(select(func.count()).select_from(model).where(column == "u1"))
            ).scalar_one() == 0
    assert private_or_chat(await a.memory.search("u1", "退货流程", limit=5)) == []


async def test_an_erase_just_before_the_answer_is_stored_leaves_no_exchange(replicas) -> None:
    """The erase lands after the answer has streamed, just before its transaction (the answer
    and its exchange are stored together): neither is kept, in either process."""
    a, b = replicas
    prepare = a.memory.exchange

    async def erase_first(*args: Any, **kwargs: Any) -> Any:
        exchange = await prepare(*args, **kwargs)
        await b.customer_data.erase("u1", CONTEXT)
        return exchange

    a.memory.exchange = erase_first  # type: ignore[method-assign]
    turn = await a.chat.prepare(user_id="u1", session_id="s1", message=ChatMessage(content="你好"))
    events = [event async for event in a.chat.answer(turn)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.status == "complete" and done.message_id is None
    async with a.db.read() as db:
        from sqlalchemy import func, select

        remaining = select(func.count()).select_from(Memory).where(Memory.owner_id == "u1")
        assert (await db.execute(remaining)).scalar_one() == 0
        assert (await db.execute(select(func.count()).select_from(Message))).scalar_one() == 0
    for services in (a, b):
        await services.sync.refresh(force=True)
        assert private_or_chat(await services.memory.search("u1", "你好", limit=5)) == []


async def test_erasing_while_an_answer_streams_over_http(make_settings, standin: StandIn) -> None:
    """DELETE while the customer's answer is streaming: the answer stops, and nothing is kept."""
    settings = make_settings(
        admin_token="t0k", llm_api_key=KEY, llm_base_url=standin.base_url, llm_timeout=30
    )
    standin.script.append({"kind": "slow", "text": "这是一个很长的回答" * 20, "chunk": 1, "delay": 0.05})
    with serve(create_app(settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:

            async def read() -> list[dict[str, Any]]:
                body = chat_body("说吧", user_id="u1", session_id="s1")
                async with aconnect_sse(
                    client, "POST", "/api/v1/chat/stream?events=typed", json=body
                ) as source:
                    return [json.loads(sse.data) | {"kind": sse.event} async for sse in source.aiter_sse()]

            reader = asyncio.create_task(read())
            while not standin.requests:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            erased = await client.delete(f"{CUSTOMERS}/u1", headers=AUTH)
            events = await reader
    assert erased.status_code == 200, erased.text
    assert erased.json()["data"]["stopped_answers"] == 1
    assert erased.json()["data"]["messages"] == 1  # the question; the answer was still streaming
    done = events[-1]
    assert done["kind"] == "done" and done["status"] == "interrupted" and done["message_id"] is None
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert await rows(app, Message) == []
        assert await rows(app, ChatSession) == []
        assert await rows(app, Memory, Memory.owner_id == "u1") == []


async def test_a_message_for_a_vanished_session_is_refused_even_without_foreign_keys(replicas) -> None:
    """SessionService.add_message checks the session itself: SQLite may run with foreign keys off."""
    a, _ = replicas
    if BACKEND == "sqlite":
        from sqlalchemy import event

        def keys_off(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=OFF")
            cursor.close()

        event.listen(a.db.engine.sync_engine, "connect", keys_off)
        await a.db.engine.dispose()  # new connections, with the listener
        async with a.db.read() as db:
            from sqlalchemy import text

            assert (await db.execute(text("PRAGMA foreign_keys"))).scalar_one() == 0
    await a.sessions.get_or_create("s1", "u1")
    await b_erase(a, "u1")
    with pytest.raises(SessionGone):
        await a.sessions.add_message("s1", "u1", role="assistant", content="迟到的回答")
    with pytest.raises(SessionGone):
        await a.sessions.add_message("never-created", "u1", role="user", content="你好")
    async with a.db.read() as db:
        from sqlalchemy import func, select

        assert (await db.execute(select(func.count()).select_from(Message))).scalar_one() == 0


async def b_erase(services: Services, user_id: str) -> None:
    await services.customer_data.erase(user_id, CONTEXT)
