"""Stopping and starting the app loses nothing."""

from __future__ import annotations

from .utils import chat_body


async def test_restart_keeps_sessions_messages_and_memories(start_app):
    _, client = await start_app()
    await client.post("/api/v1/chat/stream", json=chat_body("买东西怎么开发票？"))
    await client.post("/api/v1/chat/memory/add", json={"user_id": "user123", "content": "我的生日是三月五日"})
    before = (await client.get("/api/v1/chat/sessions/user123")).json()

    _, client = await start_app()
    assert (await client.get("/api/v1/chat/sessions/user123")).json() == before
    found = (
        await client.post("/api/v1/chat/memory/retrieve", json={"user_id": "user123", "query": "我的生日"})
    ).json()
    contents = [m["content"] for m in found["data"]["memories"]]
    assert "我的生日是三月五日" in contents
    # The exchange in chat memory, and both messages, came back too.
    exchange = (
        await client.post(
            "/api/v1/chat/memory/retrieve", json={"user_id": "user123", "query": "买东西怎么开发票？"}
        )
    ).json()
    assert any(
        m["type"] == "chat" and m["content"].startswith("用户：买东西怎么开发票？")
        for m in exchange["data"]["memories"]
    )
    history = (await client.get("/api/v1/chat/session/session456/messages")).json()
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
