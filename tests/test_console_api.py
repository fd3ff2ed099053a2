"""The operator console's API: /api/v1/admin/stats/..., /gaps, /gaps/resolve, /conversations.

A small known dataset is written straight into the database (chosen times, outcomes, ratings and
sources); the gap flow drives real turns through /api/v1/chat/stream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from c_app.db.models import AuditEntry, ChatSession, Message

from .utils import answer_text, assert_envelope, chat_body, rows

ADMIN = "/api/v1/admin"
AUTH = {"Authorization": "Bearer t0k"}
STREAM = "/api/v1/chat/stream"


@pytest.fixture
async def admin(start_app):
    app, client = await start_app(admin_token="t0k", load_sample_kb=False)
    client.headers.update(AUTH)
    return app, client


def today_at(days_ago: int, hour: int = 1) -> datetime:
    """01:00 UTC (by default) on the UTC day `days_ago` days before today."""
    day = datetime.now(UTC).date() - timedelta(days=days_ago)
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def source(entry_id: int, kind: str = "public") -> dict[str, Any]:
    return {
        "id": entry_id,
        "type": kind,
        "content": "答案",
        "relevance_score": 0.9,
        "created_at": None,
        "title": f"标题{entry_id}",
        "question": f"问题{entry_id}",
    }


async def add_session(app, session_id: str, user_id: str, turns: list[dict[str, Any]]) -> list[Message]:
    """A session with (question, answer) turns: each turn gives `q`, `at`, and optionally `outcome`,
    `feedback` (with `feedback_at`) and `sources` of the answer."""
    messages: list[Message] = []
    async with app.state.services.db.transaction() as db:
        first = turns[0]["at"]
        last = max(t["at"] for t in turns)
        db.add(
            ChatSession(
                id=session_id,
                user_id=user_id,
                title=f"会话{session_id}",
                status="active",
                meta={},
                message_count=2 * len(turns),
                created_at=first,
                last_activity_at=last,
            )
        )
        await db.flush()
        for turn in turns:
            question = Message(
                session_id=session_id,
                user_id=user_id,
                role="user",
                content=turn["q"],
                status="complete",
                created_at=turn["at"],
            )
            db.add(question)
            await db.flush()
            answer = Message(
                session_id=session_id,
                user_id=user_id,
                role="assistant",
                content=turn.get("a", "回答"),
                status="complete",
                outcome=turn.get("outcome", "answered"),
                sources=turn.get("sources"),
                # What the chat service records: the first public source is the entry answered with.
                entry_id=next(
                    (src["id"] for src in turn.get("sources") or [] if src["type"] == "public"), None
                ),
                feedback=turn.get("feedback"),
                feedback_at=turn.get("feedback_at"),
                created_at=turn["at"] + timedelta(seconds=1),
            )
            db.add(answer)
            await db.flush()
            messages += [question, answer]
    return messages


async def known_dataset(app, a: int = 7, b: int = 9) -> None:
    """Entries `a` and `b` are cited as sources (with a private memory 3); `a` then `b` answered."""
    await add_session(
        app,
        "s1",
        "u1",
        [
            {
                "q": "怎么退货",
                "at": today_at(0),
                "sources": [source(a)],
                "feedback": "like",
                "feedback_at": today_at(0, 2),
            },
            {
                "q": "  怎么退货 ",
                "at": today_at(2),
                "sources": [source(3, "private"), source(b), source(a)],
                "feedback": "dislike",
                "feedback_at": today_at(1),
            },
        ],
    )
    await add_session(app, "s2", "u2", [{"q": "运费多少", "at": today_at(5), "outcome": "no_match"}])
    await add_session(app, "s3", "u3", [{"q": "怎么退货", "at": today_at(40), "sources": [source(b)]}])


async def get(client, path: str, **params: Any) -> dict[str, Any]:
    response = await client.get(f"{ADMIN}/{path}", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    return body["data"]


def expected_days(n: int) -> list[str]:
    today = datetime.now(UTC).date()
    return [(today - timedelta(days=n - 1 - i)).isoformat() for i in range(n)]


# -- auth and parameters --------------------------------------------------------------------------


async def test_every_console_route_needs_the_admin_token(admin):
    _app, client = admin
    client.headers.pop("Authorization")
    for path in (
        "stats/turns",
        "stats/outcomes",
        "stats/feedback",
        "stats/top-questions",
        "stats/top-entries",
        "gaps",
        "conversations",
        "conversations/s1",
    ):
        assert_envelope(await client.get(f"{ADMIN}/{path}"), 401)
        assert_envelope(await client.get(f"{ADMIN}/{path}", headers={"Authorization": "Bearer nope"}), 401)
    assert_envelope(await client.post(f"{ADMIN}/gaps/resolve", json={"question": "x", "entry_id": 1}), 401)


async def test_bad_parameters_get_the_error_envelope(admin):
    _app, client = admin
    for path, params in (
        ("stats/turns", {"days": 0}),
        ("stats/outcomes", {"days": 367}),
        ("stats/feedback", {"days": "x"}),
        ("stats/top-questions", {"limit": 51}),
        ("stats/top-entries", {"limit": 0}),
        ("gaps", {"kind": "bad"}),
        ("gaps", {"page_size": 101}),
        ("conversations", {"feedback": "meh"}),
        ("conversations", {"outcome": "other"}),
        ("conversations", {"since": "yesterday"}),
    ):
        assert_envelope(await client.get(f"{ADMIN}/{path}", params=params), 422, error_type="ValidationError")
    assert_envelope(
        await client.get(f"{ADMIN}/conversations", params={"since": "2026-02-02", "until": "2026-02-01"}), 400
    )
    assert_envelope(await client.post(f"{ADMIN}/gaps/resolve", json={"question": " ", "entry_id": 1}), 422)
    assert_envelope(await client.post(f"{ADMIN}/gaps/resolve", json={"question": "x", "entry_id": 0}), 422)
    assert_envelope(await client.get(f"{ADMIN}/conversations/nope"), 404, "会话不存在")


# -- charts ---------------------------------------------------------------------------------------


async def test_daily_series_are_filled_and_counted(admin):
    app, client = admin
    empty = await get(client, "stats/turns", days=5)
    assert empty == {"days": expected_days(5), "counts": [0] * 5}
    assert len((await get(client, "stats/turns"))["days"]) == 30  # the default
    assert len((await get(client, "stats/turns", days=366))["counts"]) == 366

    await known_dataset(app)
    turns = await get(client, "stats/turns", days=7)
    assert turns == {"days": expected_days(7), "counts": [0, 1, 0, 0, 1, 0, 1]}
    assert sum((await get(client, "stats/turns", days=30))["counts"]) == 3
    assert sum((await get(client, "stats/turns", days=41))["counts"]) == 4
    assert (await get(client, "stats/turns", days=1))["counts"] == [1]

    outcomes = await get(client, "stats/outcomes", days=7)
    assert outcomes["days"] == expected_days(7)
    series = outcomes["series"]
    assert set(series) == {"answered", "clarified", "no_match", "handoff", "smalltalk", "blocked"}
    assert series["answered"] == [0, 0, 0, 0, 1, 0, 1]
    assert series["no_match"] == [0, 1, 0, 0, 0, 0, 0]
    assert series["clarified"] == series["handoff"] == series["smalltalk"] == series["blocked"] == [0] * 7

    feedback = await get(client, "stats/feedback", days=3)
    assert feedback == {"days": expected_days(3), "likes": [0, 0, 1], "dislikes": [0, 1, 0]}


async def test_top_questions_and_entries(admin):
    app, client = admin
    created = await client.post(
        f"{ADMIN}/knowledge", json={"question": "怎么退货？", "title": "退货", "answer": "7天无理由。"}
    )
    a = created.json()["data"]["id"]
    b = a + 100  # an entry deleted since it was cited
    await known_dataset(app, a, b)
    top = await get(client, "stats/top-questions", days=30)
    assert top == {"items": [{"question": "怎么退货", "count": 2}, {"question": "运费多少", "count": 1}]}
    assert (await get(client, "stats/top-questions", days=41))["items"][0] == {
        "question": "怎么退货",
        "count": 3,
    }
    assert len((await get(client, "stats/top-questions", days=30, limit=1))["items"]) == 1

    # Counted by the entry each answer was built on (its first public source; a private one is not).
    entries = await get(client, "stats/top-entries", days=30)
    assert entries == {
        "items": [
            {"id": a, "question": "怎么退货？", "title": "退货", "count": 1},
            {"id": b, "question": "", "title": "", "count": 1},
        ]
    }  # ties: by id; b was deleted since
    wider = await get(client, "stats/top-entries", days=41)
    assert [(i["id"], i["count"]) for i in wider["items"]] == [(b, 2), (a, 1)]
    assert (await get(client, "stats/top-entries", days=1))["items"] == [
        {"id": a, "question": "怎么退货？", "title": "退货", "count": 1}
    ]


# -- gaps -----------------------------------------------------------------------------------------


async def test_gaps_group_by_normalised_question_and_filter_by_kind(admin):
    app, client = admin
    await add_session(
        app,
        "g1",
        "u1",
        [
            {"q": "发票能开专票吗", "at": today_at(3), "outcome": "no_match"},
            {"q": "會員卡怎麼辦理", "at": today_at(2), "outcome": "clarified"},  # traditional
            {"q": "好的", "at": today_at(2, 3), "outcome": "answered"},
        ],
    )
    await add_session(
        app,
        "g2",
        "u2",
        [
            {
                "q": "会员卡怎么办理",
                "at": today_at(1),
                "outcome": "handoff",
                "feedback": "dislike",
                "feedback_at": today_at(1, 5),
            },
            {
                "q": "怎么退货",
                "at": today_at(0),
                "outcome": "answered",
                "feedback": "dislike",
                "feedback_at": today_at(0, 2),
            },
            {"q": "很久以前的问题", "at": today_at(60), "outcome": "no_match"},
        ],
    )
    data = await get(client, "gaps", days=30)
    assert data["total"] == 3 and data["page"] == 1 and data["page_size"] == 20
    items = data["items"]
    assert [i["question"] for i in items] == ["怎么退货", "会员卡怎么办理", "发票能开专票吗"]
    card = items[1]
    assert card["count"] == 2
    assert card["kinds"] == {"no_match": 0, "clarified": 1, "disliked": 1, "handoff": 1}
    assert card["last_at"] == today_at(1, 5).isoformat()
    assert items[0]["kinds"] == {"no_match": 0, "clarified": 0, "disliked": 1, "handoff": 0}
    assert all(i["suggested_entries"] == [] for i in items)  # an empty knowledge base

    only = await get(client, "gaps", kind="no_match", days=30)
    assert [i["question"] for i in only["items"]] == ["发票能开专票吗"]
    assert [i["question"] for i in (await get(client, "gaps", kind="disliked"))["items"]] == [
        "怎么退货",
        "会员卡怎么办理",
    ]
    assert [i["kinds"]["handoff"] for i in (await get(client, "gaps", kind="handoff"))["items"]] == [1]
    assert (await get(client, "gaps", kind="no_match", days=61))["total"] == 2

    paged = await get(client, "gaps", page=2, page_size=2)
    assert paged["total"] == 3 and [i["question"] for i in paged["items"]] == ["发票能开专票吗"]


async def test_gap_needs_the_customer_question_right_before_the_answer(admin):
    app, client = admin
    messages = await add_session(
        app, "g3", "u3", [{"q": "积分怎么用", "at": today_at(1), "outcome": "no_match"}]
    )
    async with app.state.services.db.transaction() as db:  # a second answer right after the first
        db.add(
            Message(
                session_id="g3",
                user_id="u3",
                role="assistant",
                content="补充",
                status="complete",
                outcome="no_match",
                created_at=messages[-1].created_at + timedelta(seconds=1),
            )
        )
    data = await get(client, "gaps")
    assert data["total"] == 1 and data["items"][0]["count"] == 1


async def test_resolving_a_gap_teaches_the_knowledge_base(admin):
    app, client = admin
    question = "火星上能送货吗"
    response = await client.post(STREAM, json=chat_body(question, user_id="c1", session_id="c1s"))
    assert response.status_code == 200
    assert [m.outcome for m in await rows(app, Message, Message.session_id == "c1s")] == [None, "no_match"]

    created = await client.post(
        f"{ADMIN}/knowledge",
        json={"question": "月球配送", "title": "地外配送", "answer": "暂不支持地外配送，敬请期待。"},
    )
    entry_id = created.json()["data"]["id"]
    gaps = await get(client, "gaps")
    assert gaps["total"] == 1
    gap = gaps["items"][0]
    assert gap["question"] == question and gap["kinds"]["no_match"] == 1
    assert len(gap["suggested_entries"]) <= 3
    for suggestion in gap["suggested_entries"]:
        assert set(suggestion) == {"id", "question", "score"}

    resolved = await client.post(f"{ADMIN}/gaps/resolve", json={"question": question, "entry_id": entry_id})
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["data"]["similar_questions"] == [question]
    again = await client.post(
        f"{ADMIN}/gaps/resolve", json={"question": f" {question} ", "entry_id": entry_id}
    )
    assert again.json()["data"]["similar_questions"] == [question]  # no duplicate
    assert (await get(client, "gaps"))["total"] == 0

    audits = await rows(app, AuditEntry, AuditEntry.action == "knowledge.update")
    assert [a.target_id for a in audits] == [str(entry_id), str(entry_id)]
    assert audits[0].detail["fields"] == ["similar_questions"]

    assert_envelope(
        await client.post(f"{ADMIN}/gaps/resolve", json={"question": question, "entry_id": 999_999}),
        404,
        "知识条目不存在",
    )

    response = await client.post(STREAM, json=chat_body(question, user_id="c2", session_id="c2s"))
    assert "暂不支持地外配送" in answer_text(response.text)
    assert [m.outcome for m in await rows(app, Message, Message.session_id == "c2s")] == [None, "answered"]
    assert (await get(client, "gaps"))["total"] == 0


# -- conversations --------------------------------------------------------------------------------


async def test_conversations_list_and_filters(admin):
    app, client = admin
    await known_dataset(app)
    await add_session(app, "s4", "u1", [{"q": "100%_退款", "at": today_at(3), "outcome": "handoff"}])

    data = await get(client, "conversations")
    assert data["total"] == 4 and [i["session_id"] for i in data["items"]] == ["s1", "s4", "s2", "s3"]
    s1 = data["items"][0]
    assert s1["user_id"] == "u1" and s1["title"] == "会话s1" and s1["message_count"] == 4
    assert s1["status"] == "active" and s1["likes"] == 1 and s1["dislikes"] == 1
    assert s1["outcomes"] == {
        "answered": 2,
        "clarified": 0,
        "no_match": 0,
        "handoff": 0,
        "smalltalk": 0,
        "blocked": 0,
    }
    assert s1["last_activity"] == today_at(0).isoformat() and s1["created_at"] == today_at(0).isoformat()

    def ids(d: dict[str, Any]) -> list[str]:
        return [i["session_id"] for i in d["items"]]

    assert ids(await get(client, "conversations", user_id="u1")) == ["s1", "s4"]
    assert ids(await get(client, "conversations", outcome="no_match")) == ["s2"]
    assert ids(await get(client, "conversations", feedback="dislike")) == ["s1"]
    assert ids(await get(client, "conversations", feedback="like")) == ["s1"]
    assert ids(await get(client, "conversations", q="运费")) == ["s2"]
    assert ids(await get(client, "conversations", q="%")) == ["s4"]  # wildcards are literal
    assert ids(await get(client, "conversations", q="0%_")) == ["s4"]
    assert ids(await get(client, "conversations", q="_")) == ["s4"]
    since = today_at(6).isoformat()
    until = today_at(1).isoformat()
    assert ids(await get(client, "conversations", since=since, until=until)) == ["s4", "s2"]
    paged = await get(client, "conversations", page=2, page_size=3)
    assert paged["total"] == 4 and ids(paged) == ["s3"]


async def test_one_conversation_is_read_only_and_audited(admin):
    app, client = admin
    await known_dataset(app)
    data = await get(client, "conversations/s1")
    assert data["session"]["session_id"] == "s1" and data["session"]["likes"] == 1
    messages = data["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [m["outcome"] for m in messages] == [None, "answered", None, "answered"]
    assert messages[1]["feedback"]["rating"] == "like" and messages[1]["sources"][0]["id"] == 7
    assert [m.action for m in await rows(app, AuditEntry)] == ["conversation.read"]
    entry = (await rows(app, AuditEntry))[0]
    assert entry.customer_id == "u1" and entry.target_type == "session" and entry.target_id == "s1"
    assert len(await rows(app, Message, Message.session_id == "s1")) == 4  # nothing changed
