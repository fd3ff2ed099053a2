"""Feedback on answers: like, dislike, clear; counted in /stats; refused for others' or users' messages."""

from __future__ import annotations

from c_app.db.models import Message

from .utils import assert_envelope, chat_body, rows

FEEDBACK = "/api/v1/chat/message/{}/feedback"


async def ask(client, question: str = "买东西怎么开发票？", *, user_id: str = "u1", session_id: str = "s1"):
    """Ask one question; returns (user message id, answer message id) from the database."""
    response = await client.post(
        "/api/v1/chat/stream", json=chat_body(question, user_id=user_id, session_id=session_id)
    )
    assert response.status_code == 200, response.text
    page = (
        await client.get(f"/api/v1/chat/session/{session_id}/messages", params={"order": "desc", "limit": 2})
    ).json()
    answer, question_row = page["messages"]
    assert (question_row["role"], answer["role"]) == ("user", "assistant")
    return question_row["id"], answer["id"]


async def stored(app, message_id: int) -> Message:
    (row,) = await rows(app, Message, Message.id == message_id)
    return row


async def counts(client) -> tuple[int, int]:
    statistics = (await client.get("/api/v1/chat/stats")).json()["statistics"]
    return statistics["feedback_likes"], statistics["feedback_dislikes"]


async def test_like_dislike_and_clear(app, client):
    _, answer_id = await ask(client)
    assert await counts(client) == (0, 0)

    liked = await client.post(FEEDBACK.format(answer_id), json={"rating": "like", "comment": "  很清楚 "})
    assert liked.status_code == 200, liked.text
    assert liked.json()["data"]["feedback"]["rating"] == "like"
    row = await stored(app, answer_id)
    assert (row.feedback, row.feedback_comment) == ("like", "很清楚")
    assert row.feedback_at is not None
    assert await counts(client) == (1, 0)
    page = (await client.get("/api/v1/chat/session/s1/messages")).json()["messages"]
    assert page[1]["feedback"]["rating"] == "like" and page[1]["feedback"]["comment"] == "很清楚"

    disliked = await client.post(FEEDBACK.format(answer_id), json={"rating": "dislike"})
    assert disliked.status_code == 200
    row = await stored(app, answer_id)
    assert (row.feedback, row.feedback_comment) == ("dislike", None)
    assert await counts(client) == (0, 1)

    cleared = await client.post(FEEDBACK.format(answer_id), json={"rating": None, "comment": "忽略"})
    assert cleared.status_code == 200
    assert cleared.json()["data"]["feedback"] is None
    row = await stored(app, answer_id)
    assert (row.feedback, row.feedback_comment, row.feedback_at) == (None, None, None)
    assert await counts(client) == (0, 0)
    page = (await client.get("/api/v1/chat/session/s1/messages")).json()["messages"]
    assert page[1]["feedback"] is None


async def test_counts_across_users_and_sessions(client):
    _, a1 = await ask(client, user_id="u1", session_id="s1")
    _, a2 = await ask(client, "你好", user_id="u2", session_id="s2")
    _, a3 = await ask(client, "谢谢", user_id="u2", session_id="s2")
    for message_id, rating, user in ((a1, "like", "u1"), (a2, "like", "u2"), (a3, "dislike", "u2")):
        response = await client.post(
            FEEDBACK.format(message_id), json={"rating": rating}, params={"user_id": user}
        )
        assert response.status_code == 200, response.text
    assert await counts(client) == (2, 1)


async def test_refusals_change_nothing(app, client):
    question_id, answer_id = await ask(client)
    ok = await client.post(FEEDBACK.format(answer_id), json={"rating": "like", "comment": "好"})
    assert ok.status_code == 200

    for message_id, body, params, status, message in (
        (question_id, {"rating": "dislike"}, {}, 400, "只能评价客服的回答"),
        (answer_id, {"rating": "dislike"}, {"user_id": "u2"}, 404, "消息不存在"),
        (999_999, {"rating": "dislike"}, {}, 404, "消息不存在"),
        (answer_id, {"rating": "love"}, {}, 422, "请求参数格式错误"),
        (answer_id, {"comment": "缺少评价"}, {}, 422, "请求参数格式错误"),
        (answer_id, {"rating": "dislike", "comment": "长" * 1001}, {}, 400, "评价内容不能超过1000个字符"),
        ("abc", {"rating": "dislike"}, {}, 422, "请求参数格式错误"),
        (0, {"rating": "dislike"}, {}, 422, "请求参数格式错误"),
        (2**70, {"rating": "dislike"}, {}, 422, "请求参数格式错误"),
    ):
        response = await client.post(FEEDBACK.format(message_id), json=body, params=params)
        assert_envelope(response, status, message)

    not_json = await client.post(
        FEEDBACK.format(answer_id), content=b"like", headers={"Content-Type": "application/json"}
    )
    assert_envelope(not_json, 422, "请求参数格式错误", "ValidationError")
    row = await stored(app, answer_id)
    assert (row.feedback, row.feedback_comment) == ("like", "好")
    assert (await stored(app, question_id)).feedback is None
    assert await counts(client) == (1, 0)


async def test_feedback_goes_with_a_deleted_session(client):
    _, answer_id = await ask(client)
    await client.post(FEEDBACK.format(answer_id), json={"rating": "dislike"})
    assert await counts(client) == (0, 1)
    assert (await client.delete("/api/v1/chat/session/s1")).status_code == 200
    assert await counts(client) == (0, 0)
    gone = await client.post(FEEDBACK.format(answer_id), json={"rating": "like"})
    assert_envelope(gone, 404, "消息不存在")
