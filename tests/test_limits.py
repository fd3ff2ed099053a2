"""Bodies are capped before they are parsed; nothing is stored from a refused request."""

from __future__ import annotations

from c_app.db.models import Memory, Upload

from .utils import count


async def test_declared_oversized_json_body_is_refused(app, client):
    before = await count(app, Memory)
    body = b'{"user_id": "u", "content": "' + b"x" * 2_000_000 + b'"}'
    response = await client.post(
        "/api/v1/chat/memory/add", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == {"code": 413, "message": "请求体过大", "type": "HTTPException"}
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
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "请求体过大"


async def test_upload_body_over_the_file_limit_is_refused_unread(app, client):
    files = {"file": ("a.png", b"x" * (12 * 1024 * 1024), "image/png")}
    response = await client.post(
        "/api/v1/chat/upload-image", files=files, data={"user_id": "u", "session_id": "s"}
    )
    assert response.status_code == 413
    assert await count(app, Upload) == 0


async def test_invalid_content_length_is_refused(client):
    response = await client.post(
        "/api/v1/chat/memory/add", content=b"{}", headers={"content-type": "application/json", "content-length": "abc"}
    )
    assert response.status_code in (400, 413)
