"""Small helpers for tests: reading SSE bodies, querying the app's database."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from sqlalchemy import func, select


def sse_data(body: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    events = [block for block in body.split("\n\n") if block]
    out = []
    for block in events:
        assert block.startswith("data: "), block
        out.append(block[len("data: ") :])
    return out


def answer_text(body: str) -> str:
    """The streamed answer with the seed's escaping undone."""
    data = sse_data(body)
    assert data[-1] == "[DONE]"
    return "".join(d for d in data[:-1] if not d.startswith('{"error"')).replace("\\n", "\n").replace("\\r", "\r")


async def rows(app: FastAPI, model: Any, *where: Any) -> list[Any]:
    async with app.state.db.read() as db:
        return list((await db.execute(select(model).where(*where))).scalars())


async def count(app: FastAPI, model: Any, *where: Any) -> int:
    async with app.state.db.read() as db:
        return (await db.execute(select(func.count()).select_from(model).where(*where))).scalar_one()


def chat_body(text: Any, *, user_id: str = "user123", session_id: str = "session456") -> dict[str, Any]:
    return {"user_id": user_id, "session_id": session_id, "message": {"role": "user", "content": text}}


def png_bytes(size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


async def upload_image(client: Any, *, user_id: str = "user123", session_id: str = "session456") -> str:
    """Upload a small PNG as `user_id`; returns its /static/uploads/... URL."""
    response = await client.post(
        "/api/v1/chat/upload-image",
        files={"file": ("photo.png", png_bytes(), "image/png")},
        data={"user_id": user_id, "session_id": session_id},
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]["file_url"]
