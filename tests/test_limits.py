"""Bodies are capped before they are parsed; nothing is stored from a refused request."""

from __future__ import annotations

from c_app.db.models import Memory, Upload

from .utils import assert_envelope, count, upload


async def test_declared_oversized_json_body_is_refused(app, client):
    before = await count(app, Memory)
    body = b'{"user_id": "u", "content": "' + b"x" * 2_000_000 + b'"}'
    response = await client.post(
        "/api/v1/chat/memory/add", content=body, headers={"content-type": "application/json"}
    )
    body = assert_envelope(response, 413, "请求体过大", "HTTPException")
    assert body["error"] == {"code": 413, "message": "请求体过大", "type": "HTTPException"}
    assert await count(app, Memory) == before


async def test_chunked_oversized_body_is_refused_while_it_arrives(app, client):
    sent = 0

    async def chunks():
        nonlocal sent
        for _ in range(50):
            sent += 100_000
            yield b"x" * 100_000

    response = await client.post(
        "/api/v1/chat/memory/add", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_envelope(response, 413, "请求体过大")


async def test_upload_body_over_the_file_limit_is_refused_unread(app, client):
    response = await upload(client, b"x" * (12 * 1024 * 1024), "a.png", user_id="u", session_id="s")
    assert_envelope(response, 413)
    assert await count(app, Upload) == 0


async def test_invalid_content_length_is_refused(client):
    response = await client.post(
        "/api/v1/chat/memory/add",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": "abc"},
    )
    assert response.status_code in (400, 413), response.text
    assert_envelope(response, response.status_code)
