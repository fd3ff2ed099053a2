"""Memory routes: add to private memory; retrieve across private, chat and public, by relevance."""

from __future__ import annotations

from c_app.db.models import Memory

from .utils import assert_envelope, chat_body, count, rows

ADD = "/api/v1/chat/memory/add"
RETRIEVE = "/api/v1/chat/memory/retrieve"


async def add(client, user_id: str, content: str) -> int:
    response = await client.post(ADD, json={"user_id": user_id, "content": content})
    assert response.status_code == 200, response.text
    return response.json()["data"]["memory_id"]


async def retrieve(client, user_id: str, query: str, **extra) -> list[dict]:
    response = await client.post(RETRIEVE, json={"user_id": user_id, "query": query, **extra})
    assert response.status_code == 200, response.text
    return response.json()["data"]["memories"]


async def ask(client, question: str, *, user_id: str, session_id: str) -> None:
    body = chat_body(question, user_id=user_id, session_id=session_id)
    response = await client.post("/api/v1/chat/stream", json=body)
    assert response.status_code == 200, response.text


async def test_add_stores_a_private_memory(app, client):
    response = await client.post(
        ADD, json={"user_id": "u1", "content": "我家住在杭州西湖区", "metadata": {"k": "v"}}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["message"] == "记忆添加成功"
    assert body["data"]["user_id"] == "u1"
    [row] = await rows(app, Memory, Memory.id == body["data"]["memory_id"])
    assert (row.scope, row.owner_id, row.content, row.meta) == (
        "private",
        "u1",
        "我家住在杭州西湖区",
        {"k": "v"},
    )


async def test_retrieve_merges_scopes_sorted_by_relevance(client):
    private_id = await add(client, "u1", "我想把发票抬头改成公司名称")
    await ask(client, "买东西怎么开发票？", user_id="u1", session_id="s1")
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
    # The right entries, not just some: the invoice-title entry leads, the user's own note and
    # the exchange just held are both there.
    assert memories[0]["type"] == "public" and "抬头" in memories[0]["title"], memories[0]
    [private] = [m for m in memories if m["type"] == "private"]
    assert (private["id"], private["content"]) == (private_id, "我想把发票抬头改成公司名称")
    [chat] = [m for m in memories if m["type"] == "chat"]
    assert "买东西怎么开发票？" in chat["content"]


async def test_default_limits_follow_the_seed(client):
    # More than three candidates in every scope, so the per-scope cut is what limits the answer.
    for i in range(4):
        await add(client, "u1", f"我第{i}次退货用的是顺丰")
        await ask(client, f"第{i}个订单怎么退货", user_id="u1", session_id=f"s{i}")
    memories = await retrieve(client, "u1", "退货")
    assert len(memories) <= 9  # three per scope, at most ten in all
    kinds = [m["type"] for m in memories]
    assert {kind: kinds.count(kind) for kind in set(kinds)} == {"private": 3, "chat": 3, "public": 3}
    assert all("退货" in m["content"] for m in memories if m["type"] != "public")
    assert memories[0]["relevance_score"] >= 0.5


async def test_users_do_not_see_each_others_memories(client):
    memory_id = await add(client, "alice", "alice 的收货地址是上海市浦东新区")
    query = "收货地址 上海市浦东新区"
    # The query does find the memory: for its owner, first.
    owners = await retrieve(client, "alice", query)
    assert owners and (owners[0]["id"], owners[0]["type"]) == (memory_id, "private")
    # Bob gets answers (the knowledge base), but nothing of alice's.
    bobs = await retrieve(client, "bob", query)
    assert bobs and all(m["type"] == "public" for m in bobs)
    assert all(m["id"] != memory_id and "alice" not in m["content"] for m in bobs)


async def test_irrelevant_query_scores_low(client):
    # Against a relevant query, which does score high on the same knowledge base ...
    relevant = await retrieve(client, "u1", "退货")
    assert relevant and relevant[0]["relevance_score"] >= 0.5 and "退货" in relevant[0]["title"]
    # ... an irrelevant one scores low on whatever it returns.
    irrelevant = await retrieve(client, "u1", "量子纠缠的物理原理")
    assert all(m["relevance_score"] < 0.5 for m in irrelevant)
    assert max((m["relevance_score"] for m in irrelevant), default=0.0) < relevant[0]["relevance_score"]


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
        assert_envelope(await client.post(ADD, json=body), status)
    assert await count(app, Memory) == before
    assert_envelope(await client.post(RETRIEVE, json={"user_id": "u", "query": ""}), 400, "查询内容不能为空")
    assert_envelope(
        await client.post(RETRIEVE, json={"user_id": "u", "query": "x", "limit": 0}),
        422,
        "请求参数格式错误",
        "ValidationError",
    )


async def test_sample_knowledge_base_is_loaded_once(start_app):
    app, _ = await start_app()
    first = await count(app, Memory, Memory.scope == "public")
    assert first >= 60
    again, _ = await start_app()
    assert await count(again, Memory, Memory.scope == "public") == first


async def test_sample_is_not_mixed_into_an_operators_knowledge_base(start_app):
    app, _ = await start_app(load_sample_kb=False)
    await app.state.services.knowledge.upsert(
        [{"external_id": "own-1", "question": "营业执照在哪里看？", "answer": "在店铺首页底部。"}]
    )
    again, _ = await start_app()
    assert await count(again, Memory, Memory.scope == "public") == 1
