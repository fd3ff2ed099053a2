"""AUTH_MODE none | api_key | jwt: who may act for whom, and how refusals look (issue 5)."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import WebSocket
from PIL import Image

from c_app.db.models import ChatSession, Memory, Message, Upload
from c_app.security.auth import authenticate_websocket

from .security_utils import API_KEY, SECRET, bearer, jwt_settings, token, websocket_handshake
from .utils import assert_envelope, chat_body, count, jpeg_bytes, png_bytes, rows, upload, uploaded

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


# --- api_key -------------------------------------------------------------------------------------


async def test_api_key_mode_needs_a_key_and_then_acts_for_any_user(start_app: Any) -> None:
    app, client = await start_app(auth_mode="api_key", api_keys=f"other-key,{API_KEY}")
    body = {"user_id": "alice", "title": "t"}
    missing = await client.post("/api/v1/chat/session/create", json=body)
    assert_envelope(missing, 401, "缺少认证信息")
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = await client.post("/api/v1/chat/session/create", json=body, headers=bearer("nope"))
    assert_envelope(wrong, 401, "认证信息无效或已过期")
    assert await count(app, ChatSession) == 0

    by_bearer = await client.post("/api/v1/chat/session/create", json=body, headers=bearer(API_KEY))
    assert by_bearer.status_code == 200
    by_header = await client.post(
        "/api/v1/chat/session/create", json={"user_id": "bob"}, headers={"X-API-Key": "other-key"}
    )
    assert by_header.status_code == 200
    owners = sorted(row.user_id for row in await rows(app, ChatSession))
    assert owners == ["alice", "bob"]


async def test_auth_mode_without_credentials_configured_refuses_to_start(make_settings: Any) -> None:
    from c_app.main import create_app

    with pytest.raises(ValueError, match="API_KEYS"):
        create_app(make_settings(auth_mode="api_key"))
    with pytest.raises(ValueError, match="JWT_SECRET"):
        create_app(make_settings(auth_mode="jwt"))


# --- jwt -----------------------------------------------------------------------------------------


async def test_jwt_user_acts_only_for_itself(start_app: Any) -> None:
    app, client = await start_app(**jwt_settings())
    alice, mallory = bearer(token("alice")), bearer(token("mallory"))
    created = await client.post(
        "/api/v1/chat/session/create", json={"user_id": "alice", "title": "地址"}, headers=alice
    )
    assert created.status_code == 200
    session_id = created.json()["session_id"]

    # A user id that is not the token's: 403, nothing written.
    foreign = await client.post("/api/v1/chat/session/create", json={"user_id": "alice"}, headers=mallory)
    assert_envelope(foreign, 403, "无权访问该用户的数据")
    listing = await client.get("/api/v1/chat/sessions/alice", headers=mallory)
    assert_envelope(listing, 403, "无权访问该用户的数据")
    memory = await client.post(
        "/api/v1/chat/memory/add", json={"user_id": "alice", "content": "假的"}, headers=mallory
    )
    assert_envelope(memory, 403)
    stream = await client.post(
        "/api/v1/chat/stream", json=chat_body("你好", user_id="alice"), headers=mallory
    )
    assert_envelope(stream, 403)
    assert await count(app, ChatSession) == 1
    assert await count(app, Memory, Memory.owner_id == "alice") == 0
    assert await count(app, Message) == 0

    # Someone else's session reads exactly like one that does not exist.
    theirs = await client.get(f"/api/v1/chat/session/{session_id}", headers=mallory)
    nobody = await client.get("/api/v1/chat/session/session_nobody_has", headers=mallory)
    assert_envelope(theirs, 404, "会话不存在")
    assert_envelope(nobody, 404, "会话不存在")
    assert theirs.json()["error"] == nobody.json()["error"]

    mine = await client.get(f"/api/v1/chat/session/{session_id}", headers=alice)
    assert mine.status_code == 200 and mine.json()["user_id"] == "alice"


@pytest.mark.parametrize(
    "make_token",
    [
        lambda: token("alice", ttl=-10),  # expired
        lambda: token("alice", secret="another-secret-that-is-also-long-enough"),  # wrong key
        lambda: jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none"),
        lambda: jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),  # no exp
        lambda: jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),  # no sub
        lambda: token("a/b"),  # a sub that is not a valid user id
        lambda: token("alice", aud="someone-else"),
        lambda: "not-a-jwt",
    ],
)
async def test_bad_tokens_are_401(start_app: Any, make_token: Any) -> None:
    _app, client = await start_app(**jwt_settings())
    response = await client.get("/api/v1/chat/sessions/alice", headers=bearer(make_token()))
    assert_envelope(response, 401, "认证信息无效或已过期")
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_audience_and_issuer_are_checked_when_configured(start_app: Any) -> None:
    _app, client = await start_app(**jwt_settings(jwt_audience="c_app", jwt_issuer="https://idp.example"))
    good = token("alice", aud="c_app", iss="https://idp.example")
    assert (await client.get("/api/v1/chat/sessions/alice", headers=bearer(good))).status_code == 200
    for bad in (token("alice", aud="c_app"), token("alice", aud="other", iss="https://idp.example")):
        assert_envelope(await client.get("/api/v1/chat/sessions/alice", headers=bearer(bad)), 401)


async def test_rs256_public_key(start_app: Any, tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    key_file = tmp_path / "jwt.pub"
    key_file.write_text(pem)
    _app, client = await start_app(auth_mode="jwt", jwt_public_key=str(key_file))
    good = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, private, algorithm="RS256")
    assert (await client.get("/api/v1/chat/sessions/alice", headers=bearer(good))).status_code == 200
    # An HS256 token signed with the public key text (the classic algorithm confusion) is refused.
    forged = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "x" * 64, algorithm="HS256")
    assert_envelope(await client.get("/api/v1/chat/sessions/alice", headers=bearer(forged)), 401)


async def test_none_mode_warns_loudly_when_not_on_loopback(start_app: Any, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="c_app.api.setup"):
        await start_app(host="0.0.0.0")
    assert any("AUTH_MODE=none" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="c_app.api.setup"):
        await start_app(host="127.0.0.1")
    assert not any("AUTH_MODE=none" in r.getMessage() for r in caplog.records)


# --- uploads -------------------------------------------------------------------------------------


async def _upload(client: Any, headers: dict[str, str], user_id: str = "alice") -> dict[str, Any]:
    return await uploaded(client, user_id=user_id, session_id=f"s-{user_id}", headers=headers)


async def test_uploads_are_readable_by_owner_or_signed_url_only(start_app: Any) -> None:
    _app, client = await start_app(**jwt_settings())
    alice, mallory = bearer(token("alice")), bearer(token("mallory"))
    data = await _upload(client, alice)
    url, name = data["file_url"], data["filename"]
    assert url.startswith(f"/static/uploads/{name}?exp=") and "&sig=" in url

    # The signed URL works with no credentials at all (an <img> tag).
    assert (await client.get(url)).content == png_bytes()
    # Without it: the owner's credentials work, anyone else's look like a missing file.
    plain = f"/static/uploads/{name}"
    assert_envelope(await client.get(plain), 401)
    assert (await client.get(plain, headers=alice)).status_code == 200
    assert_envelope(await client.get(plain, headers=mallory), 404, "文件不存在")
    assert_envelope(await client.get(f"/download/{name}", headers=mallory), 404, "文件不存在")
    assert (await client.get(f"/download/{name}", headers=alice)).status_code == 200

    # A signature is for one name, and expires.
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert_envelope(await client.get(tampered), 401)
    exp = int(url.split("exp=")[1].split("&")[0])
    forged_exp = url.replace(f"exp={exp}", f"exp={exp + 1000}")
    assert_envelope(await client.get(forged_exp), 401)
    other = await _upload(client, bearer(token("bob")), user_id="bob")
    assert_envelope(await client.get(f"/static/uploads/{other['filename']}?" + url.split("?")[1]), 401)


async def test_expired_signature_is_refused(start_app: Any) -> None:
    from c_app.security.signing import sign

    app, client = await start_app(**jwt_settings())
    data = await _upload(client, bearer(token("alice")))
    settings = app.state.settings
    exp, sig = sign(settings, data["filename"], now=time.time() - settings.upload_url_ttl - 5)
    assert_envelope(await client.get(f"/static/uploads/{data['filename']}?exp={exp}&sig={sig}"), 401)


async def test_signed_image_url_works_in_a_chat_message(start_app: Any) -> None:
    _app, client = await start_app(**jwt_settings())
    alice = bearer(token("alice"))
    url = (await _upload(client, alice))["file_url"]
    content = [{"type": "text", "text": "这张图"}, {"type": "image_url", "image_url": {"url": url}}]
    response = await client.post(
        "/api/v1/chat/stream", json=chat_body(content, user_id="alice"), headers=alice
    )
    assert response.status_code == 200, response.text
    # Someone else cannot attach it, even holding the signed URL.
    mallory = bearer(token("mallory"))
    stolen = await client.post(
        "/api/v1/chat/stream", json=chat_body(content, user_id="mallory"), headers=mallory
    )
    assert_envelope(stolen, 400, "图片不存在或无权访问")


async def test_only_recorded_uploads_are_served(app: Any, client: Any) -> None:
    folder = Path(app.state.settings.upload_dir)
    stray = folder / ("0" * 32 + ".png")
    stray.write_bytes(png_bytes())
    (folder / "notes.txt").write_text("internal")
    assert_envelope(await client.get(f"/static/uploads/{stray.name}"), 404, "文件不存在")
    assert_envelope(await client.get("/static/uploads/notes.txt"), 404)
    assert_envelope(await client.get("/static/uploads/..%2F..%2Fetc%2Fpasswd"), 404)


async def test_gps_metadata_is_stripped_before_storing(app: Any, client: Any) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels are turned instead
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (39.0, 54.0, 26.0), 3: "E", 4: (116.0, 23.0, 29.0)})
    original = jpeg_bytes((40, 20), (200, 30, 30), quality=75, exif=exif, comment=b"home address")
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(0x8825)

    data = await uploaded(
        client, original, "gps.jpg", content_type="image/jpeg", user_id="alice", session_id="s1"
    )
    stored = (Path(app.state.settings.upload_dir) / data["filename"]).read_bytes()
    image = Image.open(io.BytesIO(stored))
    assert not image.getexif() and not image.getexif().get_ifd(0x8825)
    assert b"Exif" not in stored and b"home address" not in stored
    assert image.size == (20, 40) and (data["width"], data["height"]) == (20, 40)


async def test_per_user_upload_quota(start_app: Any) -> None:
    app, client = await start_app(upload_quota_bytes=len(png_bytes()) * 2)
    for _ in range(2):
        await _upload(client, {})
    refused = await upload(client, user_id="alice", session_id="s-alice")
    assert "上传空间已用完" in assert_envelope(refused, 413)["error"]["message"]
    assert await count(app, Upload) == 2
    assert len([p for p in Path(app.state.settings.upload_dir).iterdir()]) == 2
    await _upload(client, {}, user_id="bob")  # the quota is per user


# --- WebSocket -----------------------------------------------------------------------------------


async def test_authenticate_websocket(start_app: Any) -> None:
    app, _client = await start_app(**jwt_settings())

    async def who(websocket: WebSocket) -> None:
        actor = await authenticate_websocket(websocket)
        await websocket.accept()
        await websocket.send_text(actor.user_id or "")

    app.add_api_websocket_route("/ws-test", who)
    refused = await websocket_handshake(app, "/ws-test")
    assert refused["type"] == "websocket.close" and refused["code"] == 1008
    bad = await websocket_handshake(app, "/ws-test", query="token=garbage")
    assert bad["type"] == "websocket.close" and bad["code"] == 1008
    assert (await websocket_handshake(app, "/ws-test", query=f"token={token('alice')}"))[
        "type"
    ] == "websocket.accept"
    by_header = await websocket_handshake(app, "/ws-test", headers=bearer(token("alice")))
    assert by_header["type"] == "websocket.accept"


# --- headers, request ids, logs ------------------------------------------------------------------


async def test_security_headers_on_every_kind_of_response(start_app: Any) -> None:
    _app, client = await start_app(hsts_seconds=31536000)
    answers = [
        await client.get("/health"),
        await client.get("/nope"),  # 404 from the router
        await client.post(
            "/api/v1/chat/memory/add", content=b"x" * 2_000_000, headers={"content-type": "application/json"}
        ),
        await client.post("/api/v1/chat/stream", json=chat_body("你好")),  # a stream
    ]
    for response in answers:
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
        assert len(response.headers["X-Request-Id"]) == 32
    docs = await client.get("/docs")
    assert "cdn.jsdelivr.net" in docs.headers["Content-Security-Policy"]
    _, plain = await start_app()
    assert "Strict-Transport-Security" not in (await plain.get("/health")).headers


async def test_request_id_is_echoed_and_on_log_lines(app: Any, client: Any) -> None:
    from c_app.api.middleware.request_id import RequestIdFilter, current_request_id

    seen: list[str] = []

    async def probe() -> dict[str, str]:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        RequestIdFilter().filter(record)
        seen.append(record.request_id)  # type: ignore[attr-defined]
        return {"id": current_request_id()}

    app.add_api_route("/probe", probe, methods=["GET"])
    response = await client.get("/probe", headers={"X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123" and seen == ["abc-123"]
    response = await client.get("/probe", headers={"X-Request-Id": "bad id\nwith newline"})
    assert (
        response.headers["X-Request-Id"] != "bad id\nwith newline"
        and len(response.headers["X-Request-Id"]) == 32
    )


async def test_secrets_and_messages_stay_out_of_info_logs(start_app: Any, caplog: Any) -> None:
    _app, client = await start_app(**jwt_settings())
    secret_token = token("alice")
    with caplog.at_level(logging.INFO):
        await client.post(
            "/api/v1/chat/stream",
            json=chat_body("我的手机号是13800000000", user_id="alice"),
            headers=bearer(secret_token),
        )
        await client.get("/api/v1/chat/sessions/alice", headers=bearer("forged-token-value"))
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert secret_token not in text and "forged-token-value" not in text and "13800000000" not in text


# --- ids, nesting, NUL ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a\x00b", "a/b", "tab\there", "a\x7f", "x" * 129])
async def test_malformed_ids_are_422_everywhere_and_store_nothing(app: Any, client: Any, bad: str) -> None:
    stream = await client.post("/api/v1/chat/stream", json=chat_body("你好", user_id=bad))
    assert_envelope(stream, 422, "请求参数格式错误")
    stream = await client.post("/api/v1/chat/stream", json=chat_body("你好", session_id=bad))
    assert_envelope(stream, 422)
    create = await client.post("/api/v1/chat/session/create", json={"user_id": bad})
    assert_envelope(create, 422)
    assert_envelope(await upload(client, user_id=bad, session_id="s"), 422)
    if "/" not in bad:  # a "/" in a path is another route
        from urllib.parse import quote

        assert_envelope(await client.get(f"/api/v1/chat/sessions/{quote(bad)}"), 422)
        assert_envelope(await client.get(f"/api/v1/chat/session/{quote(bad)}"), 422)
    assert (
        await count(app, Message) == 0
        and await count(app, ChatSession) == 0
        and await count(app, Upload) == 0
    )


async def test_empty_ids_keep_the_seed_messages(client: Any) -> None:
    assert_envelope(
        await client.post("/api/v1/chat/stream", json=chat_body("你好", user_id="")), 400, "用户ID不能为空"
    )
    assert_envelope(
        await client.post("/api/v1/chat/stream", json=chat_body("你好", session_id="")), 400, "会话ID不能为空"
    )


async def test_nesting_keys_and_nul_are_bounded(app: Any, client: Any) -> None:
    deep: Any = "x"
    for _ in range(6):
        deep = {"k": deep}
    for metadata in (deep, {f"k{i}": i for i in range(51)}, {"note": "a\x00b"}):
        response = await client.post(
            "/api/v1/chat/memory/add", json={"user_id": "u", "content": "c", "metadata": metadata}
        )
        assert_envelope(response, 422)
    nul = await client.post("/api/v1/chat/memory/add", json={"user_id": "u", "content": "a\x00b"})
    assert_envelope(nul, 422)
    in_part = [{"type": "text", "text": "a\x00b"}]
    assert_envelope(await client.post("/api/v1/chat/stream", json=chat_body(in_part)), 422)
    assert_envelope(await client.post("/api/v1/chat/stream", json=chat_body("a\x00b")), 422)
    assert await count(app, Memory, Memory.owner_id == "u") == 0 and await count(app, Message) == 0
    ok = {"user_id": "u", "content": "c", "metadata": {"a": {"b": {"c": {"d": 1}}}, "tags": ["x"]}}
    assert (await client.post("/api/v1/chat/memory/add", json=ok)).status_code == 200
