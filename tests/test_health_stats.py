"""Health and statistics, plus the root routes."""

from __future__ import annotations

from .utils import chat_body


async def test_root_and_liveness(client):
    root = (await client.get("/")).json()
    assert root["message"] == "智能客服系统 API" and root["health"] == "/api/v1/chat/health"
    assert (await client.get("/health")).json() == {"status": "healthy", "service": "智能客服系统"}


async def test_health_is_healthy_then_degraded(app, client):
    response = await client.get("/api/v1/chat/health")
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"

    async def down():
        raise ConnectionRefusedError("db down")

    app.state.services.sessions.db.ping = down
    response = await client.get("/api/v1/chat/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded" and body["services"]["session_service"] == "unhealthy"


async def test_stats_count_from_the_database(client):
    before = (await client.get("/api/v1/chat/stats")).json()
    assert isinstance(before["uptime"], float | int) and before["uptime"] >= 0
    assert before["version"] == "1.0.0"
    await client.post("/api/v1/chat/stream", json=chat_body("你好"))
    await client.post("/api/v1/chat/session/create", json={"user_id": "u2"})
    after = (await client.get("/api/v1/chat/stats")).json()["statistics"]
    assert after["total_sessions"] == before["statistics"]["total_sessions"] + 2
    assert after["total_messages"] == before["statistics"]["total_messages"] + 2
    assert after["active_sessions"] == 2
    assert after["total_uploads"] == 0
