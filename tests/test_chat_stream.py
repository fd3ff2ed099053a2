"""POST /api/v1/chat/stream on the embedded default (knowledge-base responder)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from c_app.db.models import ChatSession, Memory, Message
from c_app.services.chat_service import until_stopped

from .conftest import BACKEND
from .utils import answer_text, chat_body, count, rows, sse_data, upload_image

STREAM = "/api/v1/chat/stream"


async def kb_entry(app, question: str) -> Memory:
    [entry] = await rows(app, Memory, Memory.scope == "public", Memory.question == question)
    return entry


async def test_seed_example_streams_into_a_new_session(app, client):
    response = await client.post(STREAM, json=chat_body("我想了解退货政策"))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "access-control-allow-origin" not in response.headers
    data = sse_data(response.text)
    assert data[-1] == "[DONE]" and len(data) >= 3
    assert all("\n" not in d for d in data)
    [session] = await rows(app, ChatSession, ChatSession.id == "session456")
    assert session.user_id == "user123"
    assert session.message_count == 2
    stored = await rows(app, Message, Message.session_id == "session456")
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[0].content == "我想了解退货政策"
    assert stored[1].content == answer_text(response.text)
    assert stored[1].engine == "knowledge_base" and stored[1].status == "complete"
    # The seed's own example question is answered with the return policy ("我想了解" is a filler).
    [policy] = await rows(app, Memory, Memory.scope == "public", Memory.external_id == "kb-return-001")
    assert stored[1].content == policy.content


async def test_confident_match_streams_the_entry_answer_in_pieces(app, client):
    entry = await kb_entry(app, "买东西怎么开发票？")
    response = await client.post(STREAM, json=chat_body("买东西怎么开发票？"))

    data = sse_data(response.text)
    assert len(data) > 3, "the answer arrives in several pieces"
    assert answer_text(response.text) == entry.content
    [answer] = await rows(app, Message, Message.role == "assistant")
    assert answer.sources and answer.sources[0]["id"] == entry.id
    assert (answer.outcome, answer.entry_id) == ("answered", entry.id)  # what the figures count
    assert "\\n" in response.text  # the answer's line breaks are escaped on the wire


async def test_similar_question_finds_the_entry(app, client):
    entry = await kb_entry(app, "买东西怎么开发票？")
    question = entry.similar_questions[0]
    response = await client.post(STREAM, json=chat_body(question))
    assert answer_text(response.text) == entry.content


async def test_no_match_apologises_suggests_and_offers_a_person(client):
    response = await client.post(STREAM, json=chat_body("火星上今天下雨了吗量子力学"))
    text = answer_text(response.text)
    assert text.startswith("抱歉")
    assert "转人工" in text


async def test_an_unclear_question_offers_up_to_three_close_questions(app, client):
    response = await client.post(STREAM, json=chat_body("发票"))
    text = answer_text(response.text)
    # Close to several entries, none clearly: no guess, numbered choices instead (clarified).
    assert text.startswith("您是不是想问")
    listed = [line for line in text.splitlines() if line[:2] in {"1.", "2.", "3.", "4."}]
    assert len(listed) == 3
    assert all("发票" in line for line in listed)


async def test_greeting_thanks_and_goodbye(client):
    greeting = answer_text((await client.post(STREAM, json=chat_body("你好"))).text)
    assert "您好" in greeting and "示例商城" in greeting
    thanks = answer_text((await client.post(STREAM, json=chat_body("谢谢！"))).text)
    assert thanks.startswith("不客气")
    bye = answer_text((await client.post(STREAM, json=chat_body("再见"))).text)
    assert "再见" in bye


async def test_asking_for_a_person_marks_the_session(app, client):
    # No agent online (issue 10): the bot takes a message instead of promising a person.
    response = await client.post(STREAM, json=chat_body("转人工"))
    assert "人工客服" in answer_text(response.text)
    [session] = await rows(app, ChatSession, ChatSession.id == "session456")
    assert session.status == "ticket"
    assert [m.outcome for m in await rows(app, Message)] == [None, "handoff"]


async def test_each_exchange_goes_to_chat_memory(app, client):
    await client.post(STREAM, json=chat_body("买东西怎么开发票？"))
    [memory] = await rows(app, Memory, Memory.scope == "chat", Memory.owner_id == "user123")
    assert memory.question == "买东西怎么开发票？"
    assert memory.content.startswith("用户：买东西怎么开发票？\n客服：")


async def test_chat_memory_is_bounded(start_app):
    app, client = await start_app(chat_memory_limit=2)
    for text in ("你好", "买东西怎么开发票？", "谢谢"):
        await client.post(STREAM, json=chat_body(text))
    kept = await rows(app, Memory, Memory.scope == "chat", Memory.owner_id == "user123")
    assert [m.question for m in kept] == ["买东西怎么开发票？", "谢谢"]


async def test_private_memory_answers_a_question_about_the_customer(client):
    added = await client.post(
        "/api/v1/chat/memory/add",
        json={"user_id": "user123", "content": "我的会员卡号是 VIP-20391，绑定手机尾号 8848"},
    )
    assert added.status_code == 200
    text = answer_text((await client.post(STREAM, json=chat_body("我的会员卡号是多少"))).text)
    assert "VIP-20391" in text
    other = answer_text(
        (await client.post(STREAM, json=chat_body("我的会员卡号是多少", user_id="u2", session_id="s2"))).text
    )
    assert "VIP-20391" not in other


async def test_another_users_session_is_refused(app, client):
    created = await client.post("/api/v1/chat/session/create", json={"user_id": "alice"})
    session_id = created.json()["session_id"]
    response = await client.post(STREAM, json=chat_body("你好", user_id="mallory", session_id=session_id))
    assert response.status_code == 403
    assert response.json()["success"] is False
    assert await count(app, Message) == 0


async def test_multimodal_content_is_stored(app, client):
    url = await upload_image(client)
    parts = [
        {"type": "text", "text": "这个商品坏了，能换货吗"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    response = await client.post(STREAM, json=chat_body(parts))
    assert response.status_code == 200
    assert sse_data(response.text)[-1] == "[DONE]"
    [question] = await rows(app, Message, Message.role == "user")
    assert question.content == "这个商品坏了，能换货吗"
    assert question.parts == parts


async def test_images_must_be_the_users_own_uploads(app, client):
    theirs = await upload_image(client, user_id="alice", session_id="alice-1")
    for url, message in (
        (theirs, "图片不存在或无权访问"),
        ("/static/uploads/" + "a" * 32 + ".png", "图片不存在或无权访问"),
        ("https://evil.example/x.png", "不支持的图片地址，请先上传图片"),
        ("file:///etc/passwd", "不支持的图片地址，请先上传图片"),
    ):
        parts = [{"type": "text", "text": "看看这个"}, {"type": "image_url", "image_url": {"url": url}}]
        response = await client.post(STREAM, json=chat_body(parts, user_id="bob", session_id="bob-1"))
        assert response.status_code == 400, url
        assert response.json()["error"]["message"] == message
    assert await count(app, Message) == 0


async def test_bad_messages_are_refused_and_store_nothing(app, client):
    cases = [
        (chat_body(""), 400, "消息内容不能为空"),
        (chat_body([]), 400, "消息内容不能为空"),
        (chat_body([{"text": "no type"}]), 400, "多模态消息格式错误"),
        (chat_body(["plain string part"]), 400, "多模态消息格式错误"),
        (chat_body([{"type": "video", "url": "x"}]), 400, "多模态消息格式错误"),
        (chat_body("你好", user_id=""), 400, "用户ID不能为空"),
        (chat_body("你好", session_id=""), 400, "会话ID不能为空"),
        (chat_body("长" * 5000), 400, None),
        (chat_body("你好", session_id="s" * 200), 422, None),
        ({"user_id": "u", "session_id": "s", "message": {"role": "system", "content": "x"}}, 422, None),
    ]
    for body, status, message in cases:
        response = await client.post(STREAM, json=body)
        assert response.status_code == status, body
        payload = response.json()
        assert payload["success"] is False and payload["error"]["code"] == status
        if message:
            assert payload["error"]["message"] == message
    assert await count(app, Message) == 0
    assert await count(app, ChatSession) == 0


async def test_error_frame_is_json_and_followed_by_done(app, client):
    async def broken(*args, **kwargs):
        raise RuntimeError("internal detail that must not leak")

    app.state.services.chat.memory.search = broken
    response = await client.post(STREAM, json=chat_body("买东西怎么开发票？"))
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])
    assert error == {"error": "处理聊天请求时发生错误，请稍后重试"}
    assert "internal detail" not in response.text
    # The question was stored before the failure, and survives it.
    assert [m.role for m in await rows(app, Message)] == ["user"]


async def test_message_count_and_activity_move(app, client):
    await client.post(STREAM, json=chat_body("你好"))
    first = (await client.get("/api/v1/chat/session/session456")).json()
    await client.post(STREAM, json=chat_body("买东西怎么开发票？"))
    second = (await client.get("/api/v1/chat/session/session456")).json()
    assert first["message_count"] == 2 and second["message_count"] == 4
    assert second["last_activity"] > first["last_activity"]
    assert second["title"] == "你好"


async def assert_answered_without_chat_memory(app, client) -> None:
    """A turn whose chat memory could not be written: the answer is stored, `done` names it, and
    no chat memory exists."""
    response = await client.post(STREAM + "?events=typed", json=chat_body("买东西怎么开发票？"))
    frames = [block for block in response.text.split("\n\n") if block]
    done = json.loads(frames[-1].split("data: ", 1)[1])
    assert frames[-1].startswith("event: done") and done["status"] == "complete"
    answer = [m for m in await rows(app, Message) if m.role == "assistant"]
    assert [m.id for m in answer] == [done["message_id"]]
    assert await count(app, Memory, Memory.scope == "chat") == 0


async def test_a_failure_to_remember_the_exchange_keeps_the_answer_and_its_id(app, client):
    async def broken(*args, **kwargs):
        raise RuntimeError("chat memory unavailable")

    app.state.services.memory.exchange = broken
    await assert_answered_without_chat_memory(app, client)


async def test_an_exchange_failing_in_the_answers_transaction_keeps_the_answer(app, client):
    """The chat memory is written in the answer's transaction: when that write fails, the answer
    is stored alone, and `done` names it."""
    memory = app.state.services.memory
    prepare = memory.exchange

    async def failing_write(*args, **kwargs):
        exchange = await prepare(*args, **kwargs)

        async def write(db):
            raise RuntimeError("chat memory unavailable")

        exchange.write = write
        return exchange

    memory.exchange = failing_write
    await assert_answered_without_chat_memory(app, client)
    [session] = await rows(app, ChatSession, ChatSession.id == "session456")
    assert session.message_count == 2  # the failed transaction moved nothing


async def test_an_answer_that_cannot_be_stored_ends_with_an_error_not_done(app, client):
    """Storing the answer fails (the database refuses it, twice): the client is never told
    `[DONE]`, it gets the seed's error event, and nothing of the answer is kept."""
    from sqlalchemy.exc import OperationalError

    sessions = app.state.services.sessions
    add_message = sessions.add_message

    async def refusing(*args, **kwargs):
        if kwargs.get("role") == "assistant":
            raise OperationalError("INSERT INTO messages", {}, Exception("database is locked"))
        return await add_message(*args, **kwargs)

    sessions.add_message = refusing
    response = await client.post(STREAM, json=chat_body("买东西怎么开发票？"))
    data = sse_data(response.text)
    assert "[DONE]" not in data
    assert json.loads(data[-1]) == {"error": "处理聊天请求时发生错误，请稍后重试"}
    assert [m.role for m in await rows(app, Message)] == ["user"]
    assert await count(app, Memory, Memory.scope == "chat") == 0

    typed = await client.post(STREAM + "?events=typed", json=chat_body("买东西怎么开发票？"))
    kinds = [block.split("\n", 1)[0] for block in typed.text.split("\n\n") if block]
    assert "event: done" not in kinds and kinds[-1] == "event: error"


@pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's busy timeout")
async def test_the_busy_timeout_expiring_on_the_answer_is_an_error_not_done(start_app, tmp_path):
    """Heavy load on SQLite: another writer holds the lock past the busy timeout while the answer
    is stored. The client must not read `[DONE]` for an answer that is not there."""
    import sqlite3

    app, client = await start_app(sqlite_busy_timeout_ms=100)
    memory = app.state.services.memory
    search = memory.search
    holder = sqlite3.connect(app.state.settings.memory_db_path, isolation_level=None)

    async def search_then_lock(*args, **kwargs):
        hits = await search(*args, **kwargs)
        holder.execute("BEGIN IMMEDIATE")  # the write lock, until the answer has given up
        return hits

    memory.search = search_then_lock
    try:
        response = await client.post(STREAM, json=chat_body("买东西怎么开发票？"))
    finally:
        holder.rollback()
        holder.close()
    data = sse_data(response.text)
    assert "[DONE]" not in data and json.loads(data[-1]) == {"error": "处理聊天请求时发生错误，请稍后重试"}
    assert [m.role for m in await rows(app, Message)] == ["user"]
    [session] = await rows(app, ChatSession, ChatSession.id == "session456")
    assert session.message_count == 1


async def test_a_stop_cancels_a_waiting_step_and_never_the_callers_own_work() -> None:
    """until_stopped runs the engine's steps in the caller's task: a stop while a step waits
    cancels it (the engine closes), a stop while the caller handles an event leaves the caller's
    own awaits alone and closes the engine before the next step; the task is left uncancelled."""
    closed: list[str] = []

    async def engine(name: str) -> AsyncIterator[int]:
        try:
            yield 1
            await asyncio.Event().wait()  # the model never answers again
            yield 2
        finally:
            closed.append(name)

    stop = asyncio.Event()
    seen = []
    async for item in until_stopped(engine("between"), stop):
        seen.append(item)
        stop.set()
        await asyncio.sleep(0.01)  # the caller's own await, after the stop: not cancelled
        seen.append(-item)
    assert seen == [1, -1] and closed == ["between"]

    stop = asyncio.Event()
    seen = []
    async for item in until_stopped(engine("waiting"), stop):
        seen.append(item)
        asyncio.get_running_loop().call_later(0.01, stop.set)  # while the next step waits
    assert seen == [1] and closed == ["between", "waiting"]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
