"""Session routes: create, get, list (one query, newest activity first)."""

from __future__ import annotations

import asyncio

from sqlalchemy import event

from c_app.errors import Forbidden

from .utils import assert_envelope, chat_body


async def test_create_and_get(client):
    response = await client.post(
        "/api/v1/chat/session/create", json={"user_id": "user123", "title": "退货咨询", "description": "d"}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"session_id", "user_id", "title", "created_at", "message_count", "last_activity"}
    assert body["session_id"].startswith("session_user123_")
    assert body["title"] == "退货咨询" and body["message_count"] == 0
    fetched = await client.get(f"/api/v1/chat/session/{body['session_id']}")
    assert fetched.status_code == 200
    assert fetched.json()["session_id"] == body["session_id"]
    assert fetched.json()["created_at"] == body["created_at"]


async def test_default_title(client):
    body = (await client.post("/api/v1/chat/session/create", json={"user_id": "u"})).json()
    assert body["title"] == "新对话"


async def test_missing_session_is_404(client):
    response = await client.get("/api/v1/chat/session/does-not-exist")
    assert_envelope(response, 404, "会话不存在", "HTTPException")


async def test_list_newest_activity_first_with_paging(client):
    ids = []
    for title in ("a", "b", "c"):
        ids.append(
            (await client.post("/api/v1/chat/session/create", json={"user_id": "u1", "title": title})).json()[
                "session_id"
            ]
        )
    await client.post("/api/v1/chat/session/create", json={"user_id": "u2"})
    # Talking in the oldest session makes it the most recent.
    await client.post("/api/v1/chat/stream", json=chat_body("你好", user_id="u1", session_id=ids[0]))

    listed = (await client.get("/api/v1/chat/sessions/u1")).json()
    assert [s["session_id"] for s in listed] == [ids[0], ids[2], ids[1]]
    assert listed[0]["message_count"] == 2
    page = (await client.get("/api/v1/chat/sessions/u1", params={"limit": 1, "offset": 1})).json()
    assert [s["session_id"] for s in page] == [ids[2]]
    assert (await client.get("/api/v1/chat/sessions/nobody")).json() == []


async def test_list_bounds(client):
    for params, message in (
        ({"limit": 0}, "限制数量必须在1-100之间"),
        ({"limit": 101}, "限制数量必须在1-100之间"),
        ({"offset": -1}, "偏移量不能为负数"),
    ):
        response = await client.get("/api/v1/chat/sessions/u1", params=params)
        assert_envelope(response, 400, message)
    assert (await client.get("/api/v1/chat/sessions/u1", params={"limit": 100})).status_code == 200
    invalid = await client.get("/api/v1/chat/sessions/u1", params={"limit": "x"})
    assert_envelope(invalid, 422, "请求参数格式错误", "ValidationError")


async def test_list_is_one_query_however_many_sessions(app, client):
    for _ in range(12):
        await client.post("/api/v1/chat/session/create", json={"user_id": "many"})
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    engine = app.state.services.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        listed = (await client.get("/api/v1/chat/sessions/many", params={"limit": 100})).json()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(listed) == 12
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1


async def test_a_new_sessions_first_question_is_one_transaction(app, client):
    """The session row and the customer's first message are written together: one commit, and
    the session counts the message."""
    sessions = app.state.services.sessions
    commits: list[object] = []

    def record(conn):
        commits.append(conn)

    engine = app.state.services.db.engine.sync_engine
    event.listen(engine, "commit", record)
    try:
        row, status = await sessions.add_question(
            "first-s", "first-u", content="你好", parts=None, title="你好"
        )
    finally:
        event.remove(engine, "commit", record)
    assert len(commits) == 1 and status == "active"
    body = (await client.get("/api/v1/chat/session/first-s")).json()
    assert body["title"] == "你好" and body["message_count"] == 1 and body["user_id"] == "first-u"
    history = (await client.get("/api/v1/chat/session/first-s/messages")).json()["messages"]
    assert [(m["id"], m["role"], m["content"]) for m in history] == [(row.id, "user", "你好")]


async def test_first_questions_at_once_open_one_session_and_refuse_another_user(app, client):
    """Six first questions for one new session id at once, from its user, plus one from another
    user: the user's six are stored in one session that counts them; the other user is refused
    (403) and nothing of theirs is stored."""
    sessions = app.state.services.sessions

    async def ask(user: str, n: int) -> str:
        try:
            await sessions.add_question("race-s", user, content=f"问题{n}", parts=None, title="t")
        except Forbidden as exc:
            return exc.message
        return "ok"

    results = await asyncio.gather(*(ask("race-u", n) for n in range(6)), ask("intruder", 99))
    body = (await client.get("/api/v1/chat/session/race-s")).json()
    owner = body["user_id"]
    assert owner in ("race-u", "intruder")
    history = (await client.get("/api/v1/chat/session/race-s/messages", params={"limit": 50})).json()[
        "messages"
    ]
    if owner == "race-u":  # the usual case: the intruder came after one of the user's inserts
        assert results == ["ok"] * 6 + ["无权访问该会话"]
        assert sorted(m["content"] for m in history) == sorted(f"问题{n}" for n in range(6))
        assert body["message_count"] == 6
    else:  # the intruder's insert won: every one of the user's questions is refused
        assert results == ["无权访问该会话"] * 6 + ["ok"]
        assert [m["content"] for m in history] == ["问题99"] and body["message_count"] == 1
