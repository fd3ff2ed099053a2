"""A session's message history (paged both ways), rename and delete, each scoped to its owner."""

from __future__ import annotations

from c_app.db.models import ChatSession, Memory, Message

from .utils import assert_envelope, chat_body, count, rows, upload_image

HISTORY = "/api/v1/chat/session/{}/messages"


async def talk(client, session_id: str, *questions: str, user_id: str = "u1") -> None:
    for question in questions:
        response = await client.post(
            "/api/v1/chat/stream", json=chat_body(question, user_id=user_id, session_id=session_id)
        )
        assert response.status_code == 200, response.text


async def history(client, session_id: str, **params):
    response = await client.get(HISTORY.format(session_id), params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_history_oldest_first_with_forward_paging(app, client):
    await talk(client, "s1", "你好", "买东西怎么开发票？", "谢谢")
    stored = [m.id for m in sorted(await rows(app, Message), key=lambda m: m.id)]
    assert len(stored) == 6

    first = await history(client, "s1", limit=4)
    assert first["session_id"] == "s1"
    assert [m["id"] for m in first["messages"]] == stored[:4]
    assert first["has_more"] is True
    assert [m["role"] for m in first["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in first["messages"] if m["role"] == "user"] == ["你好", "买东西怎么开发票？"]

    rest = await history(client, "s1", limit=4, after=first["messages"][-1]["id"])
    assert [m["id"] for m in rest["messages"]] == stored[4:]
    assert rest["has_more"] is False


async def test_history_newest_first_with_backward_paging(app, client):
    await talk(client, "s1", "你好", "买东西怎么开发票？", "谢谢")
    stored = [m.id for m in sorted(await rows(app, Message), key=lambda m: m.id)]

    newest = await history(client, "s1", limit=4, order="desc")
    assert [m["id"] for m in newest["messages"]] == stored[::-1][:4]
    assert newest["has_more"] is True
    older = await history(client, "s1", limit=4, order="desc", before=newest["messages"][-1]["id"])
    assert [m["id"] for m in older["messages"]] == stored[1::-1]
    assert older["has_more"] is False
    # Reading back from a cursor in ascending order: the nearest older messages, oldest first.
    back_asc = await history(client, "s1", limit=2, before=stored[4])
    assert [m["id"] for m in back_asc["messages"]] == stored[2:4]
    assert back_asc["has_more"] is True
    # Reading forward in descending order: the nearest newer messages, newest first.
    fwd_desc = await history(client, "s1", limit=2, after=stored[1], order="desc")
    assert [m["id"] for m in fwd_desc["messages"]] == [stored[3], stored[2]]


async def test_history_items_carry_answer_details(client):
    await talk(client, "s1", "买东西怎么开发票？")
    url = await upload_image(client, user_id="u1", session_id="s1")
    parts = [{"type": "text", "text": "这张发票对吗"}, {"type": "image_url", "image_url": {"url": url}}]
    await talk(client, "s1", parts)  # type: ignore[arg-type]

    messages = (await history(client, "s1"))["messages"]
    question, answer = messages[0], messages[1]
    assert set(answer) == {
        "id",
        "role",
        "content",
        "parts",
        "status",
        "engine",
        "sources",
        "feedback",
        "created_at",
        "outcome",
        "agent_name",  # a human agent's name on role=agent messages (issue 10)
    }
    assert question["parts"] is None and question["feedback"] is None and question["outcome"] is None
    assert answer["agent_name"] is None
    assert answer["outcome"] == "answered"
    assert "电子发票" in answer["content"]
    assert answer["status"] == "complete" and answer["engine"]
    assert answer["sources"] and answer["sources"][0]["type"] == "public"
    assert answer["feedback"] is None
    assert messages[2]["parts"] == [
        {"type": "text", "text": "这张发票对吗"},
        {"type": "image_url", "image_url": {"url": url}},
    ]


async def test_history_of_another_users_session_is_404(client):
    await talk(client, "s1", "你好", user_id="u1")
    response = await client.get(HISTORY.format("s1"), params={"user_id": "u2"})
    assert_envelope(response, 404, "会话不存在")
    assert len((await history(client, "s1", user_id="u1"))["messages"]) == 2
    assert_envelope(await client.get(HISTORY.format("nope")), 404, "会话不存在")


async def test_history_bad_parameters_are_4xx(client):
    await talk(client, "s1", "你好")
    for params, status, message in (
        ({"limit": 0}, 400, "限制数量必须在1-200之间"),
        ({"limit": 201}, 400, "限制数量必须在1-200之间"),
        ({"order": "sideways"}, 400, "排序方式只能是 asc 或 desc"),
        ({"before": 5, "after": 1}, 400, "before 和 after 不能同时使用"),
        ({"before": "abc"}, 422, "请求参数格式错误"),
        ({"after": -1}, 422, "请求参数格式错误"),
        ({"before": 2**70}, 422, "请求参数格式错误"),
        ({"limit": "many"}, 422, "请求参数格式错误"),
    ):
        response = await client.get(HISTORY.format("s1"), params=params)
        assert_envelope(response, status, message)
    assert len((await history(client, "s1", limit=200))["messages"]) == 2


async def test_rename(app, client):
    created = (
        await client.post("/api/v1/chat/session/create", json={"user_id": "u1", "title": "旧标题"})
    ).json()
    sid = created["session_id"]
    response = await client.patch(f"/api/v1/chat/session/{sid}", json={"title": "  退货\n 问题  "})
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "退货 问题"
    assert response.json()["session_id"] == sid
    assert (await client.get(f"/api/v1/chat/session/{sid}")).json()["title"] == "退货 问题"
    assert [s["title"] for s in (await client.get("/api/v1/chat/sessions/u1")).json()] == ["退货 问题"]
    exactly_200 = "长" * 200
    assert (await client.patch(f"/api/v1/chat/session/{sid}", json={"title": exactly_200})).status_code == 200
    assert (await rows(app, ChatSession))[0].title == exactly_200


async def test_rename_refusals_change_nothing(app, client):
    sid = (
        await client.post("/api/v1/chat/session/create", json={"user_id": "u1", "title": "原标题"})
    ).json()["session_id"]
    for body, params, status, message in (
        ({"title": "   "}, {}, 400, "会话标题不能为空"),
        ({"title": "字" * 201}, {}, 400, "会话标题不能超过200个字符"),
        ({}, {}, 422, "请求参数格式错误"),
        ({"title": 5}, {}, 422, "请求参数格式错误"),
        ({"title": "别人的"}, {"user_id": "u2"}, 404, "会话不存在"),
    ):
        response = await client.patch(f"/api/v1/chat/session/{sid}", json=body, params=params)
        assert_envelope(response, status, message)
    missing = await client.patch("/api/v1/chat/session/nope", json={"title": "x"})
    assert_envelope(missing, 404, "会话不存在")
    assert [s.title for s in await rows(app, ChatSession)] == ["原标题"]


async def test_delete_removes_messages_but_keeps_memories(app, client):
    await talk(client, "s1", "买东西怎么开发票？", "你好")
    await talk(client, "s2", "你好")
    added = await client.post("/api/v1/chat/memory/add", json={"user_id": "u1", "content": "我是会员"})
    assert added.status_code == 200
    memories_before = await count(app, Memory, Memory.owner_id == "u1")
    assert memories_before >= 2  # the private memory and at least one remembered exchange

    response = await client.delete("/api/v1/chat/session/s1")
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"session_id": "s1", "deleted_messages": 4}
    assert await count(app, Message, Message.session_id == "s1") == 0
    assert await count(app, ChatSession, ChatSession.id == "s1") == 0
    assert await count(app, Message, Message.session_id == "s2") == 2
    assert await count(app, Memory, Memory.owner_id == "u1") == memories_before
    assert_envelope(await client.get("/api/v1/chat/session/s1"), 404, "会话不存在")
    assert [s["session_id"] for s in (await client.get("/api/v1/chat/sessions/u1")).json()] == ["s2"]
    assert_envelope(await client.delete("/api/v1/chat/session/s1"), 404, "会话不存在")


async def test_delete_another_users_session_is_404_and_keeps_it(app, client):
    await talk(client, "s1", "你好", user_id="u1")
    response = await client.delete("/api/v1/chat/session/s1", params={"user_id": "u2"})
    assert_envelope(response, 404, "会话不存在")
    assert await count(app, ChatSession, ChatSession.id == "s1") == 1
    assert await count(app, Message, Message.session_id == "s1") == 2
    too_long = await client.delete("/api/v1/chat/session/" + "x" * 129)
    assert_envelope(too_long, 422, "请求参数格式错误", "ValidationError")
