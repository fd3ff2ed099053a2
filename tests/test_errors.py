"""Every error a client can meet comes in the seed's envelope, in Chinese, naming nothing internal.

{"success": false, "error": {"code", "message", "type"}, "timestamp"}
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError

from c_app.db.models import ChatSession, Memory, MemoryChange, Message, Upload

from .utils import assert_envelope, chat_body, count

CHAT = "/api/v1/chat"
ALLOWED_ORIGIN = "http://localhost:3000"
EVIL_ORIGIN = "https://evil.example"


async def table_counts(app: FastAPI) -> dict[str, int]:
    return {
        model.__tablename__: await count(app, model)
        for model in (ChatSession, Message, Memory, MemoryChange, Upload)
    }


def raising_client(app: FastAPI) -> httpx.AsyncClient:
    """A client that, like a real server, gets the 500 response rather than the re-raised exception."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://testserver"
    )


# --- framework errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/v1/nope", "/api/v1/chat/unknown", "/nothing-here", "/api/v2/chat/stream"]
)
async def test_unknown_route_is_404(client: httpx.AsyncClient, path: str) -> None:
    body = assert_envelope(await client.get(path), 404, "请求的资源不存在", "HTTPException")
    assert "Not Found" not in body["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", f"{CHAT}/stream", "POST"),
        ("GET", f"{CHAT}/session/create", None),  # matches GET /session/{session_id}: a 404, not a 405
        ("PUT", f"{CHAT}/upload-image", "POST"),
        ("DELETE", f"{CHAT}/stats", "GET"),
        ("POST", f"{CHAT}/health", "GET"),
    ],
)
async def test_wrong_method_is_405(
    client: httpx.AsyncClient, method: str, path: str, allow: str | None
) -> None:
    response = await client.request(method, path)
    if allow is None:
        assert_envelope(response, 404, "会话不存在")
        return
    assert_envelope(response, 405, "请求方法不允许", "HTTPException")
    assert response.headers["allow"] == allow


@pytest.mark.parametrize(
    "content",
    [b'{"user_id": "u1", ', b"not json at all", b'{"user_id": "u1"}}', b"\xff\xfe\x00garbage"],
)
async def test_malformed_json_is_422(app: FastAPI, client: httpx.AsyncClient, content: bytes) -> None:
    before = await table_counts(app)
    response = await client.post(
        f"{CHAT}/session/create", content=content, headers={"content-type": "application/json"}
    )
    assert_envelope(response, 422, "请求参数格式错误", "ValidationError")
    assert await table_counts(app) == before


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        (f"{CHAT}/session/create", {"user_id": 12345}),
        (f"{CHAT}/session/create", {"user_id": ["u1"]}),
        (f"{CHAT}/session/create", {}),
        (f"{CHAT}/memory/add", {"user_id": "u1", "content": {"a": 1}}),
        (f"{CHAT}/memory/retrieve", {"user_id": "u1", "query": "退货", "limit": "many"}),
        (f"{CHAT}/stream", {"user_id": "u1", "session_id": "s1", "message": "hi"}),
        (
            f"{CHAT}/stream",
            {"user_id": "u1", "session_id": "s1", "message": {"role": "system", "content": "hi"}},
        ),
    ],
)
async def test_wrong_types_are_422(app: FastAPI, client: httpx.AsyncClient, path: str, payload: Any) -> None:
    before = await table_counts(app)
    body = assert_envelope(await client.post(path, json=payload), 422, "请求参数格式错误", "ValidationError")
    assert isinstance(body["error"]["details"], list) and body["error"]["details"]
    for detail in body["error"]["details"]:
        assert set(detail) <= {"loc", "msg", "type"}
    assert await table_counts(app) == before


async def test_wrong_query_type_is_422(client: httpx.AsyncClient) -> None:
    assert_envelope(
        await client.get(f"{CHAT}/sessions/u1?limit=abc"), 422, "请求参数格式错误", "ValidationError"
    )


async def test_validation_details_never_echo_the_submitted_value(client: httpx.AsyncClient) -> None:
    marker = "MARKER-" + uuid.uuid4().hex
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", f"{CHAT}/session/create", {"json": {"user_id": {"secret": marker}}}),
        ("POST", f"{CHAT}/session/create", {"json": {"user_id": [marker]}}),
        ("POST", f"{CHAT}/session/create", {"json": {"user_id": "u1", "title": marker * 20}}),  # too long
        ("POST", f"{CHAT}/memory/retrieve", {"json": {"user_id": "u1", "query": "q", "limit": marker}}),
        ("POST", f"{CHAT}/stream", {"json": {"user_id": "u1", "session_id": "s", "message": marker}}),
        ("GET", f"{CHAT}/sessions/u1?limit={marker}", {}),
        ("GET", f"{CHAT}/sessions/u1?offset={marker}", {}),
        (
            "POST",
            f"{CHAT}/session/create",
            {"content": '{"user_id": "' + marker, "headers": {"content-type": "application/json"}},
        ),
        ("POST", f"{CHAT}/upload-image", {"data": {"user_id": "u1", "session_id": marker * 10}}),
    ]
    for method, url, kwargs in requests:
        response = await client.request(method, url, **kwargs)
        assert_envelope(response, 422, "请求参数格式错误", "ValidationError")
        assert marker not in response.text, (url, response.text)


# --- errors of the app itself --------------------------------------------------------------


async def test_unhandled_error_is_500_naming_nothing(app: FastAPI) -> None:
    async def boom() -> None:
        raise RuntimeError("secret-internal-detail")

    app.add_api_route("/__boom", boom, methods=["GET"])
    async with raising_client(app) as client:
        response = await client.get("/__boom")
    body = assert_envelope(response, 500, "服务器内部错误", "InternalServerError")
    assert set(body["error"]) == {"code", "message", "type"}
    for leak in ("secret-internal-detail", "RuntimeError", "Traceback", "boom", ".py"):
        assert leak not in response.text


async def test_service_failure_is_500_naming_nothing(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken() -> dict[str, int]:
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr(app.state.services.sessions, "statistics", broken)
    async with raising_client(app) as client:
        response = await client.get(f"{CHAT}/stats")
    assert_envelope(response, 500, "服务器内部错误", "InternalServerError")
    assert "secret-internal-detail" not in response.text
    assert "RuntimeError" not in response.text


async def test_database_unavailable_is_503_with_retry_after(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down() -> dict[str, int]:
        raise OperationalError("SELECT secret_table", {}, Exception("connection refused to db-host-internal"))

    monkeypatch.setattr(app.state.services.sessions, "statistics", down)
    response = await client.get(f"{CHAT}/stats")
    assert_envelope(response, 503, error_type="ServiceUnavailable")
    assert int(response.headers["retry-after"]) > 0
    for leak in ("secret_table", "db-host-internal", "OperationalError", "SELECT"):
        assert leak not in response.text

    monkeypatch.undo()
    assert (await client.get(f"{CHAT}/stats")).status_code == 200


# --- the seed's 400 and 404 messages -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "message"),
    [
        ("POST", "/session/create", {"user_id": ""}, 400, "用户ID不能为空"),
        ("GET", "/sessions/u?limit=0", None, 400, "限制数量必须在1-100之间"),
        ("GET", "/sessions/u?limit=101", None, 400, "限制数量必须在1-100之间"),
        ("GET", "/sessions/u?limit=-5", None, 400, "限制数量必须在1-100之间"),
        ("GET", "/sessions/u?offset=-1", None, 400, "偏移量不能为负数"),
        ("GET", "/session/nope", None, 404, "会话不存在"),
        ("POST", "/memory/add", {"user_id": "u1", "content": ""}, 400, "记忆内容不能为空"),
        ("POST", "/memory/add", {"user_id": "u1", "content": "   "}, 400, "记忆内容不能为空"),
        ("POST", "/memory/add", {"user_id": "", "content": "我喜欢蓝色"}, 400, "用户ID不能为空"),
        ("POST", "/memory/retrieve", {"user_id": "u1", "query": ""}, 400, "查询内容不能为空"),
        ("POST", "/memory/retrieve", {"user_id": "", "query": "退货"}, 400, "用户ID不能为空"),
        ("POST", "/stream", chat_body([]), 400, "消息内容不能为空"),
        ("POST", "/stream", chat_body(""), 400, "消息内容不能为空"),
        ("POST", "/stream", chat_body("   \n "), 400, "消息内容不能为空"),
        ("POST", "/stream", chat_body([1]), 400, "多模态消息格式错误"),
        ("POST", "/stream", chat_body([{"x": 1}]), 400, "多模态消息格式错误"),
        ("POST", "/stream", chat_body(["你好"]), 400, "多模态消息格式错误"),
        ("POST", "/stream", chat_body([{"type": "text"}]), 400, "多模态消息格式错误"),
        ("POST", "/stream", chat_body([{"type": "image_url"}]), 400, "多模态消息格式错误"),
        ("POST", "/stream", chat_body([{"type": "video", "url": "x"}]), 400, "多模态消息格式错误"),
        ("POST", "/stream", chat_body("你好", user_id=""), 400, "用户ID不能为空"),
        ("POST", "/stream", chat_body("你好", session_id=""), 400, "会话ID不能为空"),
    ],
)
async def test_seed_messages_and_nothing_written(
    app: FastAPI,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    payload: Any,
    status: int,
    message: str,
) -> None:
    before = await table_counts(app)
    assert before["memories"] > 0  # the sample knowledge base is there; counts are compared, not zeros
    response = await client.request(method, CHAT + path, json=payload)
    assert_envelope(response, status, message, "HTTPException")
    assert await table_counts(app) == before


async def test_blank_text_parts_are_empty_message(app: FastAPI, client: httpx.AsyncClient) -> None:
    before = await table_counts(app)
    payload = chat_body([{"type": "text", "text": "   "}, {"type": "text", "text": "\n"}])
    response = await client.post(f"{CHAT}/stream", json=payload)
    assert_envelope(response, 400, "消息内容不能为空", "HTTPException")
    assert await table_counts(app) == before


async def test_valid_requests_do_write(app: FastAPI, client: httpx.AsyncClient) -> None:
    """The counterpart of the test above: the same tables do change when a request is valid."""
    before = await table_counts(app)
    response = await client.post(f"{CHAT}/memory/add", json={"user_id": "u1", "content": "我喜欢蓝色"})
    assert response.status_code == 200, response.text
    response = await client.post(f"{CHAT}/stream", json=chat_body("你好", user_id="u1", session_id="s-valid"))
    assert response.status_code == 200, response.text
    after = await table_counts(app)
    assert after["memories"] > before["memories"]
    assert after["chat_sessions"] == before["chat_sessions"] + 1
    assert after["messages"] >= before["messages"] + 1


async def test_another_users_session_is_hidden_or_forbidden(client: httpx.AsyncClient) -> None:
    created = await client.post(f"{CHAT}/session/create", json={"user_id": "alice"})
    session_id = created.json()["session_id"]
    response = await client.post(
        f"{CHAT}/stream", json=chat_body("你好", user_id="bob", session_id=session_id)
    )
    assert_envelope(response, 403, "无权访问该会话", "HTTPException")


# --- CORS ----------------------------------------------------------------------------------


async def test_preflight_from_allowed_origin(client: httpx.AsyncClient) -> None:
    response = await client.options(
        f"{CHAT}/stream",
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]


async def test_preflight_from_other_origin_gets_no_allow_origin(client: httpx.AsyncClient) -> None:
    response = await client.options(
        f"{CHAT}/stream",
        headers={"Origin": EVIL_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code >= 400
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(("origin", "expected"), [(ALLOWED_ORIGIN, ALLOWED_ORIGIN), (EVIL_ORIGIN, None)])
async def test_stream_response_cors(client: httpx.AsyncClient, origin: str, expected: str | None) -> None:
    response = await client.post(
        f"{CHAT}/stream",
        json=chat_body("你好", session_id=f"cors-{uuid.uuid4().hex[:6]}"),
        headers={"Origin": origin},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers.get("access-control-allow-origin") == expected
    assert response.headers.get("access-control-allow-origin") != "*"


async def test_error_responses_carry_cors_for_allowed_origin(client: httpx.AsyncClient) -> None:
    """A browser front end can read the envelope of an error (otherwise it sees only a network error)."""
    response = await client.get(f"{CHAT}/session/nope", headers={"Origin": ALLOWED_ORIGIN})
    assert_envelope(response, 404, "会话不存在")
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    response = await client.get(f"{CHAT}/session/nope", headers={"Origin": EVIL_ORIGIN})
    assert "access-control-allow-origin" not in response.headers
