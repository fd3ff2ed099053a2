"""POST /api/v1/chat/upload-image, GET /static/uploads/..., GET /download/{filename}.

What a client and the database see: the seed's response shape and Chinese messages, the bytes
served back, rows in `uploads`, and files present or absent in the upload directory.
"""

from __future__ import annotations

import io
import os
import random
import re
import struct
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import httpx
import pytest
from fastapi import FastAPI
from PIL import Image, PngImagePlugin

from c_app.db.models import Upload
from c_app.main import create_app

from .utils import UPLOAD, assert_envelope, count, image_bytes, jpeg_bytes, png_bytes, rows, upload

STORED = re.compile(r"^[0-9a-f]{32}\.(?:jpg|png|gif|webp|bmp)$")
ALLOWED = ".bmp, .gif, .jpeg, .jpg, .png, .webp"


# --- images made in memory -------------------------------------------------------------------


def noise_png(side: int, *, pad: int = 0, seed: int = 1) -> bytes:
    """An incompressible PNG (seeded random pixels), optionally grown by a `pad`-character text chunk."""
    img = Image.frombytes("RGB", (side, side), random.Random(seed).randbytes(side * side * 3))
    info = PngImagePlugin.PngInfo()
    if pad:
        info.add_text("p", "x" * pad)  # tEXt is stored as is: one more character, one more byte
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def png_of_exact_size(target: int) -> bytes:
    """A valid PNG of exactly `target` bytes (random pixels, then a text chunk to make up the rest)."""
    side = 128
    while len(noise_png(side, pad=1)) >= target:
        side -= 4
    base = len(noise_png(side, pad=1))
    data = noise_png(side, pad=1 + target - base)
    assert len(data) == target
    return data


def png_dimensions(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit solid PNG: huge in pixels, tiny in bytes."""
    return image_bytes("PNG", (width, height), 0, mode="1", optimize=False, compress_level=9)


# --- helpers -------------------------------------------------------------------------------


def upload_dir(app: FastAPI) -> Path:
    return Path(app.state.settings.upload_dir)


def dir_entries(app: FastAPI) -> list[str]:
    """Everything in the upload directory, hidden temp files included."""
    path = upload_dir(app)
    return sorted(os.listdir(path)) if path.exists() else []


async def assert_nothing_stored(app: FastAPI, before: list[str] | None = None) -> None:
    assert dir_entries(app) == (before or [])
    assert await count(app, Upload) == 0


async def raw_get(app: FastAPI, raw_path: bytes) -> tuple[int, bytes]:
    """GET a path exactly as written (httpx would normalise away `..`), straight through ASGI."""
    path, _, query = raw_path.partition(b"?")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(path.decode("latin-1")),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
    }
    messages: list[dict[str, Any]] = []
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()  # the client stays until the response is complete
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], body


# --- successful uploads --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "filename", "sent_type", "suffix", "real_type", "size"),
    [
        (lambda: png_bytes((32, 24)), "截图.png", "image/png", ".png", "image/png", (32, 24)),
        (lambda: jpeg_bytes((40, 30)), "photo.JPG", "image/jpeg", ".jpg", "image/jpeg", (40, 30)),
        # The content type comes from what the bytes are, not from the name or the client's header.
        (lambda: jpeg_bytes((41, 31)), "really-a-jpeg.png", "image/png", ".jpg", "image/jpeg", (41, 31)),
    ],
)
async def test_upload_real_image(
    app: FastAPI,
    client: httpx.AsyncClient,
    make: Any,
    filename: str,
    sent_type: str,
    suffix: str,
    real_type: str,
    size: tuple[int, int],
) -> None:
    data = make()
    user_id = "user-7788-张三"
    response = await upload(
        client, data, filename, content_type=sent_type, user_id=user_id, session_id="sess-1"
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["message"] == "图片上传成功"
    info = body["data"]
    stored = info["filename"]
    assert STORED.fullmatch(stored), stored
    assert stored.endswith(suffix)
    assert "7788" not in stored and "user" not in stored and "sess" not in stored
    assert info["file_url"] == f"/static/uploads/{stored}"
    assert info["original_filename"] == filename
    assert info["size"] == len(data)
    assert info["content_type"] == real_type
    assert (info["width"], info["height"]) == size
    datetime.fromisoformat(info["upload_time"])

    served = await client.get(info["file_url"])
    assert served.status_code == 200
    assert served.content == data
    assert served.headers["content-type"].startswith(real_type)

    # The file on disk is exactly what was sent; no temp file is left next to it.
    assert dir_entries(app) == [stored]
    assert (upload_dir(app) / stored).read_bytes() == data

    [row] = await rows(app, Upload)
    assert row.user_id == user_id
    assert row.session_id == "sess-1"
    assert row.size == len(data)
    assert row.stored_name == stored
    assert row.original_name == filename
    assert row.content_type == real_type
    assert (row.width, row.height) == size


async def test_two_uploads_of_same_name_get_different_files(app: FastAPI, client: httpx.AsyncClient) -> None:
    first, second = png_bytes(color=(1, 2, 3)), png_bytes(color=(4, 5, 6))
    r1 = await upload(client, first, "same.png")
    r2 = await upload(client, second, "same.png")
    assert r1.status_code == r2.status_code == 200
    n1, n2 = r1.json()["data"]["filename"], r2.json()["data"]["filename"]
    assert n1 != n2
    assert (await client.get(f"/static/uploads/{n1}")).content == first
    assert (await client.get(f"/static/uploads/{n2}")).content == second
    assert await count(app, Upload) == 2


async def test_original_filename_is_reduced_to_its_base_name(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await upload(client, png_bytes(), "../../etc/evil.png")
    assert response.status_code == 200, response.text
    assert response.json()["data"]["original_filename"] == "evil.png"
    assert dir_entries(app) == [response.json()["data"]["filename"]]


# --- refused uploads -----------------------------------------------------------------------


async def test_text_named_png_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await upload(client, "这不是图片，只是一段文字。\n".encode() * 50, "fake.png")
    assert_envelope(response, 400, "文件内容不是有效的图片")
    await assert_nothing_stored(app)


@pytest.mark.parametrize("filename", ["notes.txt", "vector.svg", "noextension", "image.png.exe", ".png"])
async def test_extension_not_allowed(app: FastAPI, client: httpx.AsyncClient, filename: str) -> None:
    response = await upload(client, png_bytes(), filename)
    body = assert_envelope(response, 400, error_type="HTTPException")
    message = body["error"]["message"]
    assert message.startswith("不支持的文件类型")
    assert message == f"不支持的文件类型。支持的格式: {ALLOWED}"
    await assert_nothing_stored(app)


async def test_svg_content_named_svg_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    response = await upload(client, svg, "x.svg", content_type="image/svg+xml")
    body = assert_envelope(response, 400, error_type="HTTPException")
    assert body["error"]["message"].startswith("不支持的文件类型")
    await assert_nothing_stored(app)


async def test_empty_file_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await upload(client, b"", "empty.png")
    assert_envelope(response, 400, "请选择要上传的文件")
    await assert_nothing_stored(app)


async def test_oversized_image_is_refused(start_app: Any) -> None:
    app, client = await start_app(max_file_size=50_000)
    expected = app.state.services.uploads.size_limit_message
    assert expected == "文件大小超过限制 (0MB)"

    data = noise_png(145)  # random pixels do not compress: ~63 KB
    assert 55_000 < len(data) < 80_000
    png_dimensions(data)
    response = await upload(client, data, "big.png")
    assert_envelope(response, 400, expected)
    await assert_nothing_stored(app)


async def test_size_limit_boundary(start_app: Any) -> None:
    app, client = await start_app(max_file_size=50_000)
    over = png_of_exact_size(50_001)
    response = await upload(client, over, "over.png")
    assert_envelope(response, 400, app.state.services.uploads.size_limit_message)
    await assert_nothing_stored(app)

    exact = png_of_exact_size(50_000)
    response = await upload(client, exact, "exact.png")
    assert response.status_code == 200, response.text
    assert response.json()["data"]["size"] == 50_000
    # The padding is a tEXt chunk, i.e. metadata: stored without it (issue 5), same pixels.
    served = (await client.get(response.json()["data"]["file_url"])).content
    assert Image.open(io.BytesIO(served)).tobytes() == Image.open(io.BytesIO(exact)).tobytes()
    assert b"xxxxxxxx" not in served

    under = png_of_exact_size(49_000)
    response = await upload(client, under, "under.png")
    assert response.status_code == 200, response.text
    assert response.json()["data"]["size"] == 49_000
    assert await count(app, Upload) == 2


async def test_default_limit_message_names_megabytes(app: FastAPI) -> None:
    assert app.state.settings.max_file_size == 10 * 1024 * 1024
    assert app.state.services.uploads.size_limit_message == "文件大小超过限制 (10MB)"


async def test_tiff_named_png_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await upload(client, image_bytes("TIFF", (16, 16), (0, 255, 0)), "tiff-inside.png")
    assert_envelope(response, 400, "文件内容不是支持的图片格式")
    await assert_nothing_stored(app)


async def test_truncated_png_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    data = noise_png(60)
    response = await upload(client, data[: len(data) // 2], "cut.png")
    assert_envelope(response, 400, "文件内容不是有效的图片")
    await assert_nothing_stored(app)


async def test_png_header_only_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await upload(client, png_bytes()[:33], "header.png")
    assert_envelope(response, 400, "文件内容不是有效的图片")
    await assert_nothing_stored(app)


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (7_000, 7_000),  # 49 Mpx: over the app's own 40 Mpx limit, under Pillow's warning
        (10_000, 10_000),  # 100 Mpx: Pillow's DecompressionBombWarning
        (20_000, 20_000),  # 400 Mpx: Pillow's DecompressionBombError
    ],
)
async def test_decompression_bomb_is_refused(
    app: FastAPI, client: httpx.AsyncClient, width: int, height: int
) -> None:
    data = bomb_png(width, height)
    assert png_dimensions(data) == (width, height)
    assert len(data) < 200_000  # small on the wire, huge once decoded
    response = await upload(client, data, "bomb.png")
    assert_envelope(response, 400, "图片像素尺寸过大")
    await assert_nothing_stored(app)


async def test_missing_file_field_is_validation_error(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await client.post(UPLOAD, data={"user_id": "u1", "session_id": "s1"})
    assert_envelope(response, 422, "请求参数格式错误", "ValidationError")
    await assert_nothing_stored(app)


async def test_empty_user_id_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await upload(client, png_bytes(), user_id="")
    assert_envelope(response, 400, "用户ID不能为空")
    await assert_nothing_stored(app)


async def test_empty_session_id_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await upload(client, png_bytes(), session_id="")
    assert_envelope(response, 400, "会话ID不能为空")
    await assert_nothing_stored(app)


@pytest.mark.parametrize("field", ["user_id", "session_id"])
async def test_empty_ids_store_nothing(app: FastAPI, client: httpx.AsyncClient, field: str) -> None:
    """Whatever the status, an upload without a user or session stores nothing."""
    ids = {"user_id": "u1", "session_id": "s1", field: ""}
    response = await upload(client, png_bytes(), **ids)
    assert response.status_code in (400, 422), response.text
    assert_envelope(response, response.status_code)
    await assert_nothing_stored(app)


async def test_blank_session_id_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await upload(client, png_bytes(), session_id="   ")
    assert_envelope(response, 400, "会话ID不能为空")
    await assert_nothing_stored(app)


async def test_upload_into_another_users_session_is_forbidden(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    created = await client.post("/api/v1/chat/session/create", json={"user_id": "alice", "title": "A"})
    assert created.status_code == 200, created.text
    session_id = created.json()["session_id"]

    response = await upload(client, png_bytes(), user_id="bob", session_id=session_id)
    assert_envelope(response, 403, "无权访问该会话")
    await assert_nothing_stored(app)

    # The owner can.
    response = await upload(client, png_bytes(), user_id="alice", session_id=session_id)
    assert response.status_code == 200, response.text
    [row] = await rows(app, Upload)
    assert (row.user_id, row.session_id) == ("alice", session_id)


# --- downloads and static files ------------------------------------------------------------


async def test_download_returns_the_stored_file_as_attachment(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    data = png_bytes((10, 10))
    stored = (await upload(client, data, "收据.png")).json()["data"]["filename"]

    response = await client.get(f"/download/{stored}")
    assert response.status_code == 200
    assert response.content == data
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment")
    assert "%E6%94%B6%E6%8D%AE.png" in disposition  # 收据.png, RFC 5987 encoded
    assert response.headers["content-type"] == "application/octet-stream"


@pytest.fixture
def planted(app: FastAPI) -> dict[str, Any]:
    """Files a traversal would like to read: one next to the upload dir, one inside it not in the db."""
    folder = upload_dir(app)
    folder.mkdir(parents=True, exist_ok=True)
    secret = "TOP-SECRET-" + uuid.uuid4().hex
    (folder.parent / "secret.txt").write_text(secret)
    (folder / "notes.txt").write_text(secret)
    orphan = f"{uuid.uuid4().hex}.png"
    (folder / orphan).write_bytes(png_bytes())
    return {"secret": secret, "orphan": orphan}


@pytest.mark.parametrize(
    "path",
    [
        "/download/..%2F..%2Fetc%2Fpasswd",
        "/download/..%2Fsecret.txt",
        "/download/%2e%2e%2fsecret.txt",
        "/download/%2e%2e%2fpyproject.toml",
        "/download/..\\..\\x",
        "/download/..%5Csecret.txt",
        "/download/notes.txt",
        "/download/%2E%2E",
        "/static/uploads/..%2Fsecret.txt",
        "/static/uploads/%2e%2e/secret.txt",
        "/static/uploads/%2e%2e/%2e%2e/pyproject.toml",
        "/static/uploads/..%5Csecret.txt",
    ],
)
async def test_traversal_is_not_found(
    app: FastAPI, client: httpx.AsyncClient, planted: dict[str, Any], path: str
) -> None:
    response = await client.get(path)
    assert_envelope(response, 404)
    assert planted["secret"] not in response.text
    assert "[tool.pytest" not in response.text


@pytest.mark.parametrize(
    "raw",
    [
        b"/static/uploads/../secret.txt",
        b"/static/uploads/../../pyproject.toml",
        b"/static/uploads/./../secret.txt",
        b"/download/../secret.txt",
    ],
)
async def test_raw_dot_dot_paths_are_not_found(
    app: FastAPI, client: httpx.AsyncClient, planted: dict[str, Any], raw: bytes
) -> None:
    # The raw request path reaches the app: a real upload is served through the same helper.
    data = png_bytes((5, 5))
    stored = (await upload(client, data)).json()["data"]["filename"]
    assert await raw_get(app, f"/static/uploads/{stored}".encode()) == (200, data)

    status, body = await raw_get(app, raw)
    assert status == 404
    assert planted["secret"].encode() not in body
    assert b"[tool.pytest" not in body


async def test_download_of_a_file_not_in_the_database_is_not_found(
    app: FastAPI, client: httpx.AsyncClient, planted: dict[str, Any]
) -> None:
    # Right shape, present on disk, but never uploaded: no row, no download.
    response = await client.get(f"/download/{planted['orphan']}")
    assert_envelope(response, 404, "文件不存在")
    # Right shape, absent everywhere.
    response = await client.get(f"/download/{uuid.uuid4().hex}.png")
    assert_envelope(response, 404, "文件不存在")
    # Not our naming scheme at all.
    response = await client.get("/download/notes.txt")
    assert_envelope(response, 404, "文件不存在")
    assert planted["secret"] not in response.text


async def test_missing_static_file_is_enveloped_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/static/uploads/{uuid.uuid4().hex}.png")
    assert_envelope(response, 404)


# --- persistence across restarts -----------------------------------------------------------


async def test_upload_survives_restart(make_settings: Any, start_app: Any) -> None:
    settings = make_settings()
    data = jpeg_bytes((64, 48))

    first = create_app(settings)
    async with (
        first.router.lifespan_context(first),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=first), base_url="http://t") as client,
    ):
        response = await upload(client, data, "keep.jpg", content_type="image/jpeg", user_id="carol")
        assert response.status_code == 200, response.text
        info = response.json()["data"]

    # A new app on the same database and upload folder.
    app, client = await start_app()
    assert app.state.settings.upload_dir == settings.upload_dir
    served = await client.get(info["file_url"])
    assert served.status_code == 200
    assert served.content == data
    downloaded = await client.get(f"/download/{info['filename']}")
    assert downloaded.status_code == 200
    assert downloaded.content == data

    [row] = await rows(app, Upload)
    assert row.stored_name == info["filename"]
    assert row.user_id == "carol"
    assert row.size == len(data)
    assert row.content_type == "image/jpeg"
    stats = await client.get("/api/v1/chat/stats")
    assert stats.json()["statistics"]["total_uploads"] == 1
