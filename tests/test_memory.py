"""Memory routes: add to private memory; retrieve across private, chat and public, by relevance."""

from __future__ import annotations

from c_app.db.models import Memory

from .utils import chat_body, count, rows

ADD = "/api/v1/chat/memory/add"
RETRIEVE = "/api/v1/chat/memory/retrieve"


async def test_add_stores_a_private_memory(app, client):
    response = await client.post(ADD, json={"user_id": "u1", "content": "我家住在杭州西湖区", "metadata": {"k": "v"}})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["message"] == "记忆添加成功"
    assert body["data"]["user_id"] == "u1"
    [row] = await rows(app, Memory, Memory.id == body["data"]["memory_id"])
    assert (row.scope, row.owner_id, row.content, row.meta) == ("private", "u1", "我家住在杭州西湖区", {"k": "v"})


async def test_retrieve_merges_scopes_sorted_by_relevance(client):
    await client.post(ADD, json={"user_id": "u1", "content": "我想把发票抬头改成公司名称"})
    await client.post("/api/v1/chat/stream", json=chat_body("买东西怎么开发票？", user_id="u1", session_id="s1"))
    response = await client.post(RETRIEVE, json={"user_id": "u1", "query": "发票抬头怎么改", "limit": 5})
    assert response.status_code == 200
    data = response.json()["data"]
    memories = data["memories"]
    assert data["query"] == "发票抬头怎么改" and data["total_count"] == len(memories) <= 5
    assert {m["type"] for m in memories} == {"private", "chat", "public"}
    scores = [m["relevance_score"] for m in memories]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    public = [m for m in memories if m["type"] == "public"]
    assert public and all(m["title"] and m["category"] for m in public)


async def test_default_limits_follow_the_seed(client):
    response = await client.post(RETRIEVE, json={"user_id": "u1", "query": "退货"})
    assert len(response.json()["data"]["memories"]) <= 9  # three per scope, at most ten in all


async def test_users_do_not_see_each_others_memories(client):
    await client.post(ADD, json={"user_id": "alice", "content": "alice 的收货地址是上海市浦东新区"})
    response = await client.post(RETRIEVE, json={"user_id": "bob", "query": "收货地址 上海市浦东新区"})
    assert all("alice" not in m["content"] for m in response.json()["data"]["memories"])


async def test_irrelevant_query_scores_low(client):
    response = await client.post(RETRIEVE, json={"user_id": "u1", "query": "量子纠缠的物理原理"})
    assert all(m["relevance_score"] < 0.5 for m in response.json()["data"]["memories"])


async def test_bad_input_stores_nothing(app, client):
    before = await count(app, Memory)
    for body, status in (
        ({"user_id": "", "content": "x"}, 400),
        ({"user_id": "u", "content": ""}, 400),
        ({"user_id": "u", "content": "   "}, 400),
        ({"user_id": "u"}, 422),
        ({"user_id": "u", "content": "x" * 10_001}, 422),
        ({"user_id": "u", "content": "x", "metadata": "not a dict"}, 422),
    ):
        assert (await client.post(ADD, json=body)).status_code == status, body
    assert await count(app, Memory) == before
    assert (await client.post(RETRIEVE, json={"user_id": "u", "query": ""})).status_code == 400
    assert (await client.post(RETRIEVE, json={"user_id": "u", "query": "x", "limit": 0})).status_code == 422


async def test_sample_knowledge_base_is_loaded_once(start_app):
    app, _ = await start_app()
    first = await count(app, Memory, Memory.scope == "public")
    assert first >= 60
    again, _ = await start_app()
    assert await count(again, Memory, Memory.scope == "public") == first


async def test_sample_is_not_mixed_into_an_operators_knowledge_base(start_app):
    app, _ = await start_app(load_sample_kb=False)
    await app.state.services.memory.upsert_public(
        [{"external_id": "own-1", "question": "营业执照在哪里看？", "answer": "在店铺首页底部。"}]
    )
    again, _ = await start_app()
    assert await count(again, Memory, Memory.scope == "public") == 1
