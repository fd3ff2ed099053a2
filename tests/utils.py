"""Small helpers for tests: reading SSE bodies, querying the app's database, checking the error
envelope, making images and uploading them."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

UPLOAD = "/api/v1/chat/upload-image"
_CJK = re.compile(r"[\u4e00-\u9fff]")


def sse_data(body: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    events = [block for block in body.split("\n\n") if block]
    out = []
    for block in events:
        assert block.startswith("data: "), block
        out.append(block[len("data: ") :])
    return out


def answer_text(body: str) -> str:
    """The streamed answer with the seed's escaping undone, event by event (README, Streaming chat)."""
    data = sse_data(body)
    assert data[-1] == "[DONE]"
    pieces = (d for d in data[:-1] if not d.startswith('{"error"'))
    return "".join(d.replace("\\n", "\n").replace("\\r", "\r") for d in pieces)


async def rows(app: FastAPI, model: Any, *where: Any) -> list[Any]:
    async with app.state.services.db.read() as db:
        return list((await db.execute(select(model).where(*where))).scalars())


async def count(app: FastAPI, model: Any, *where: Any) -> int:
    async with app.state.services.db.read() as db:
        return (await db.execute(select(func.count()).select_from(model).where(*where))).scalar_one()


def chat_body(text: Any, *, user_id: str = "user123", session_id: str = "session456") -> dict[str, Any]:
    return {"user_id": user_id, "session_id": session_id, "message": {"role": "user", "content": text}}


def assert_envelope(
    response: httpx.Response, status: int, message: str | None = None, error_type: str | None = None
) -> dict[str, Any]:
    """The seed's error envelope, exactly: {"success": false, "error": {"code", "message", "type"
    [, "details"]}, "timestamp"}, as JSON, with `status` as both the HTTP status and error.code, a
    Chinese message (`message` when given) and a type (`error_type` when given; any otherwise), and a
    current ISO timestamp. Returns the body for further checks."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"success", "error", "timestamp"}, body
    assert body["success"] is False
    error = body["error"]
    assert set(error) - {"details"} == {"code", "message", "type"}, error
    assert error["code"] == status
    assert isinstance(error["message"], str) and _CJK.search(error["message"]), error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if message is not None:
        assert error["message"] == message
    if error_type is not None:
        assert error["type"] == error_type
    stamp = datetime.fromisoformat(body["timestamp"])
    now = datetime.now(UTC) if stamp.tzinfo else datetime.now()
    assert abs(now - stamp) < timedelta(minutes=5), body["timestamp"]
    return body


# --- images and uploads ----------------------------------------------------------------------


def image_bytes(
    fmt: str = "PNG",
    size: tuple[int, int] = (32, 24),
    color: Any = (10, 120, 200),
    *,
    mode: str = "RGB",
    **save: Any,
) -> bytes:
    """A solid-colour image made in memory, saved as `fmt` with Pillow's `save` options."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, fmt, **save)
    return buffer.getvalue()


def png_bytes(size: tuple[int, int] = (32, 24), color: Any = (10, 120, 200), **save: Any) -> bytes:
    return image_bytes("PNG", size, color, **save)


def jpeg_bytes(size: tuple[int, int] = (40, 30), color: Any = (20, 120, 220), **save: Any) -> bytes:
    return image_bytes("JPEG", size, color, **{"quality": 90, **save})


async def upload(
    client: httpx.AsyncClient,
    data: bytes | None = None,
    filename: str = "photo.png",
    *,
    content_type: str = "image/png",
    user_id: str = "user123",
    session_id: str = "session456",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST /api/v1/chat/upload-image as the seed's form (file, user_id, session_id); `data`
    defaults to png_bytes(). Returns the response, whatever its status."""
    return await client.post(
        UPLOAD,
        files={"file": (filename, png_bytes() if data is None else data, content_type)},
        data={"user_id": user_id, "session_id": session_id},
        headers=headers,
    )


async def uploaded(
    client: httpx.AsyncClient, data: bytes | None = None, filename: str = "photo.png", **kwargs: Any
) -> dict[str, Any]:
    """Upload (as `upload`) and require success; returns the response's `data`."""
    response = await upload(client, data, filename, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def upload_image(
    client: httpx.AsyncClient, *, user_id: str = "user123", session_id: str = "session456"
) -> str:
    """Upload a small PNG as `user_id`; returns its /static/uploads/... URL."""
    return (await uploaded(client, user_id=user_id, session_id=session_id))["file_url"]
