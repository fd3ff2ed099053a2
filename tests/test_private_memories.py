"""A user's private memories: list, update, delete (/api/v1/chat/memory/private/{user_id}/...)."""

from __future__ import annotations

import pytest

from c_app.db.models import Memory

from .utils import assert_envelope, rows

ADD = "/api/v1/chat/memory/add"
RETRIEVE = "/api/v1/chat/memory/retrieve"
PRIVATE = "/api/v1/chat/memory/private"


async def add(client, user_id: str, content: str, metadata: dict | None = None) -> int:
    response = await client.post(ADD, json={"user_id": user_id, "content": content, "metadata": metadata})
    assert response.status_code == 200
    return response.json()["data"]["memory_id"]


async def private_hits(client, user_id: str, query: str) -> dict[int, str]:
    return {
        memory_id: content for memory_id, (content, _) in (await scored_hits(client, user_id, query)).items()
    }


async def scored_hits(client, user_id: str, query: str) -> dict[int, tuple[str, float]]:
    response = await client.post(RETRIEVE, json={"user_id": user_id, "query": query, "limit": 5})
    memories = response.json()["data"]["memories"]
    return {m["id"]: (m["content"], m["relevance_score"]) for m in memories if m["type"] == "private"}


@pytest.fixture
async def app_client(start_app):
    """The change log is not polled here: search sees a write only if the write updated the index."""
    return await start_app(index_refresh_interval=3600)


def assert_not_found(response) -> None:
    assert_envelope(response, 404, "记忆不存在")


async def test_list_is_paged_newest_first_and_per_user(client):
    ids = [await add(client, "u1", f"第{i}条记忆：我喜欢的颜色是{i}号色") for i in range(5)]
    await add(client, "u2", "别人的记忆")
    response = await client.get(f"{PRIVATE}/u1", params={"limit": 2, "offset": 1})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    data = body["data"]
    assert data["user_id"] == "u1" and data["total"] == 5
    assert [m["memory_id"] for m in data["memories"]] == [ids[3], ids[2]]
    assert all(m["user_id"] == "u1" and m["created_at"] and m["updated_at"] for m in data["memories"])
    everything = (await client.get(f"{PRIVATE}/u1")).json()["data"]["memories"]
    assert [m["memory_id"] for m in everything] == ids[::-1]
    assert (await client.get(f"{PRIVATE}/nobody")).json()["data"] | {"memories": None} == {
        "user_id": "nobody",
        "total": 0,
        "limit": 20,
        "offset": 0,
        "memories": None,
    }


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"offset": -1}])
async def test_list_refuses_bad_paging(client, params):
    response = await client.get(f"{PRIVATE}/u1", params=params)
    assert_envelope(response, 400)


async def test_update_changes_what_search_finds(app, client):
    memory_id = await add(client, "u1", "我的收货地址是杭州市西湖区文三路", {"title": "地址"})
    assert memory_id in await private_hits(client, "u1", "我的收货地址")

    response = await client.put(
        f"{PRIVATE}/u1/{memory_id}", json={"content": "我的收货地址改成了上海市浦东新区世纪大道"}
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["content"] == "我的收货地址改成了上海市浦东新区世纪大道" and data["metadata"] == {
        "title": "地址"
    }
    [row] = await rows(app, Memory, Memory.id == memory_id)
    assert row.content == data["content"] and row.scope == "private" and row.owner_id == "u1"
    content, score = (await scored_hits(client, "u1", "上海市浦东新区世纪大道"))[memory_id]
    assert content == data["content"] and score >= 0.5  # the index holds the new text
    assert (await scored_hits(client, "u1", "杭州市西湖区文三路")).get(memory_id, ("", 0.0))[1] < 0.5

    response = await client.put(f"{PRIVATE}/u1/{memory_id}", json={"metadata": {"title": "新地址", "k": 1}})
    assert response.status_code == 200
    [row] = await rows(app, Memory, Memory.id == memory_id)
    assert (
        row.meta == {"title": "新地址", "k": 1} and row.title == "新地址" and row.content == data["content"]
    )

    for body in ({}, {"content": "   "}):
        assert_envelope(await client.put(f"{PRIVATE}/u1/{memory_id}", json=body), 400)
    empty = await client.put(f"{PRIVATE}/u1/{memory_id}", json={"content": ""})
    assert_envelope(empty, 422, "请求参数格式错误", "ValidationError")


async def test_delete_removes_the_memory_from_search(app, client):
    memory_id = await add(client, "u1", "我对花生过敏，请不要推荐含花生的零食")
    keep_id = await add(client, "u1", "我的会员卡号是 8888")
    assert memory_id in await private_hits(client, "u1", "花生过敏")
    response = await client.delete(f"{PRIVATE}/u1/{memory_id}")
    assert response.status_code == 200 and response.json()["data"] == {
        "memory_id": memory_id,
        "user_id": "u1",
    }
    assert await rows(app, Memory, Memory.id == memory_id) == []
    assert memory_id not in await private_hits(client, "u1", "花生过敏")
    assert [row.id for row in await rows(app, Memory, Memory.scope == "private")] == [keep_id]
    assert_not_found(await client.delete(f"{PRIVATE}/u1/{memory_id}"))


async def test_another_users_memory_is_not_found(app, client):
    memory_id = await add(client, "alice", "alice 的手机号是 13800000000")
    assert_not_found(await client.put(f"{PRIVATE}/bob/{memory_id}", json={"content": "被改了"}))
    assert_not_found(await client.delete(f"{PRIVATE}/bob/{memory_id}"))
    [row] = await rows(app, Memory, Memory.id == memory_id)
    assert row.content == "alice 的手机号是 13800000000"
    # Nor can a public entry or a chat exchange be reached through these routes.
    [public] = (await rows(app, Memory, Memory.scope == "public"))[:1]
    assert_not_found(await client.delete(f"{PRIVATE}/{public.owner_id or 'x'}/{public.id}"))
    assert_not_found(await client.put(f"{PRIVATE}/alice/999999999", json={"content": "x"}))
