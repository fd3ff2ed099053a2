"""Issue 11's knowledge gaps: paraphrases grouped with counts, first/last seen and examples, most
frequent first; the customer's pick among clarified choices pre-selects the entry; resolving into
that entry or into a new one answers the next customer (end to end, through /chat/stream)."""

from __future__ import annotations

import json

import pytest

from c_app.db.models import Memory, Message

from .utils import answer_text, assert_envelope, chat_body, rows

ADMIN = "/api/v1/admin"
STREAM = "/api/v1/chat/stream"


@pytest.fixture
async def admin(start_app):
    app, client = await start_app(admin_token="t0k")  # the sample knowledge base
    client.headers.update({"Authorization": "Bearer t0k"})
    return app, client


async def say(client, text: str, session: str) -> str:
    response = await client.post(STREAM, json=chat_body(text, user_id=f"u-{session}", session_id=session))
    assert response.status_code == 200
    return answer_text(response.text)


async def gaps(client, **params) -> dict:
    response = await client.get(f"{ADMIN}/gaps", params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_paraphrases_fall_together_counted_with_first_last_and_examples(admin):
    _, client = admin
    for n, text in enumerate(["火星上能送货吗", "火星能送货吗", "能送货到火星上吗", "帮我写一首诗"]):
        assert (await say(client, text, f"p{n}")).startswith("抱歉")
    by_count = await gaps(client, sort="count")
    assert by_count["total"] == 2
    mars, poem = by_count["items"]
    assert mars["count"] == 3 and mars["kinds"]["no_match"] == 3
    assert sorted([mars["question"], *mars["examples"]]) == sorted(
        ["火星上能送货吗", "火星能送货吗", "能送货到火星上吗"]
    )
    assert mars["first_at"] <= mars["last_at"]
    assert poem["question"] == "帮我写一首诗" and poem["count"] == 1 and poem["examples"] == []
    recent = await gaps(client, sort="recent")
    assert recent["items"][0]["question"] == "帮我写一首诗"  # the newest first
    assert_envelope(await client.get(f"{ADMIN}/gaps", params={"sort": "bad"}), 422)


async def test_the_customers_pick_preselects_the_entry_and_resolving_answers_the_next_one(admin):
    app, client = admin
    assert (await say(client, "发票", "c1")).startswith("您是不是想问")
    [clarified] = [m for m in await rows(app, Message, Message.session_id == "c1") if m.role == "assistant"]
    picked_id = clarified.choices[1]
    await say(client, "2", "c1")  # the customer picks the second choice
    [gap] = [g for g in (await gaps(client))["items"] if g["question"] == "发票"]
    assert gap["kinds"]["clarified"] == 1 and gap["chosen_entry_id"] == picked_id

    resolved = await client.post(
        f"{ADMIN}/gaps/resolve", json={"question": "发票", "entry_id": gap["chosen_entry_id"]}
    )
    assert resolved.status_code == 200, resolved.text
    assert "发票" in resolved.json()["data"]["similar_questions"]
    [entry] = await rows(app, Memory, Memory.id == picked_id)
    assert await say(client, "发票", "c2") == entry.content  # the next customer gets the answer
    assert [g for g in (await gaps(client))["items"] if g["question"] == "发票"] == []


async def test_a_gap_resolved_into_a_new_entry_answers_the_next_customer(admin):
    app, client = admin
    await say(client, "可以开收据吗", "r1")
    [first] = [m for m in await rows(app, Message, Message.session_id == "r1") if m.role == "assistant"]
    assert first.outcome in ("no_match", "clarified")  # not in the knowledge base: a gap
    assert any(g["question"] == "可以开收据吗" for g in (await gaps(client))["items"])

    body = {
        "question": "可以开收据吗",
        "answer": "可以，在订单详情页申请电子收据。",
        "title": "收据",
        "category": "发票",
    }
    created = await client.post(f"{ADMIN}/gaps/resolve", json=body)
    assert created.status_code == 200, created.text
    data = created.json()["data"]
    assert (data["question"], data["answer"], data["category"]) == ("可以开收据吗", body["answer"], "发票")
    [row] = await rows(app, Memory, Memory.id == data["id"])
    assert row.scope == "public" and row.content == body["answer"]

    assert await say(client, "可以开收据吗", "r2") == body["answer"]
    assert not any(g["question"] == "可以开收据吗" for g in (await gaps(client))["items"])


async def test_resolve_needs_exactly_one_target(admin):
    app, client = admin
    before = len(await rows(app, Memory, Memory.scope == "public"))
    for body in (
        {"question": "x"},
        {"question": "x", "entry_id": 1, "answer": "y"},
        {"question": "x", "answer": ""},
    ):
        response = await client.post(f"{ADMIN}/gaps/resolve", content=json.dumps(body))
        assert_envelope(response, 422)
    assert len(await rows(app, Memory, Memory.scope == "public")) == before
