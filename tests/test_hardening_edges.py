"""Edges found by a probe against a loopback server in AUTH_MODE=jwt, each held shut here.

5. Credentials in query strings (`?token=`, `?sig=`, `?api_key=`, ...) reach no log line: uvicorn's
   access log, its WebSocket lines and ours, under `run_server.py` and `uvicorn c_app.main:app`.
6. A WebSocket closes (1008) when its token expires and answers no turn after it; a handshake from a
   foreign Origin is refused in every AUTH_MODE (no Origin, a listed one and the app's own pass).
11. /stats is the operator's once auth is on; no third-party CORS origin by default; request
    headers are bounded (431 in the envelope).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
import websockets

from c_app.config import Settings
from c_app.db.models import Message
from c_app.main import create_app

from .conftest import BACKEND
from .security_utils import API_KEY, SECRET, bearer, jwt_settings, token, websocket_handshake
from .servers import free_port, serve
from .utils import assert_envelope, chat_body, png_bytes, rows

ROOT = Path(__file__).resolve().parent.parent
WS_PATH = "/api/v1/chat/ws"
STATS = "/api/v1/chat/stats"
ADMIN = "admin-token-for-the-hardening-tests"
real_server_only_once = pytest.mark.skipif(
    BACKEND != "sqlite", reason="the real-process tests run once, on the embedded default"
)


def ws_url(base: str, query: str = "") -> str:
    return base.replace("http://", "ws://") + WS_PATH + (f"?{query}" if query else "")


# --- 5. credentials stay out of every log line -------------------------------------------------


@contextlib.contextmanager
def server_process(command: list[str], tmp_path: Path, port: int) -> Iterator[tuple[str, Path]]:
    """The app in a process of its own (AUTH_MODE=jwt, INFO logs); yields its URL and its log file
    (stdout and stderr together)."""
    log = tmp_path / "server.log"
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "MEMORY_DB_PATH": str(tmp_path / "data" / "customer_service.db"),
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "LOG_LEVEL": "info",
        "AUTH_MODE": "jwt",
        "JWT_SECRET": SECRET,
        "URL_SIGNING_SECRET": "hardening-signing-secret",
        "PYTHONUNBUFFERED": "1",
        "LOAD_SAMPLE_KB": "false",  # start in a second, not ten
    }
    env.pop("DATABASE_URL", None)
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
            yield base, log
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def wait_for_line(log: Path, needle: str) -> None:
    """Log lines are written after the response; wait (bounded) until one naming `needle` is there."""
    deadline = time.monotonic() + 20
    while needle not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no log line with {needle!r}:\n{log.read_text(errors='replace')}"
        time.sleep(0.05)


async def leak_credentials(base: str) -> list[str]:
    """Every way the probe put a credential into a URL; returns the secret values used."""
    user_token = token("log-user")
    forged = "FORGED-TOKEN-VALUE-0001"
    named = {"access_token": "AT-SECRET-0002", "api_key": "AK-SECRET-0003", "key": "K-SECRET-0004"}
    named["password"] = "PW-SECRET-0005"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert (await client.get(f"/chat?user=u&token={user_token}")).status_code == 200
        assert (await client.get("/health", params=named)).status_code == 200
        upload = await client.post(
            "/api/v1/chat/upload-image",
            files={"file": ("p.png", png_bytes(), "image/png")},
            data={"user_id": "log-user", "session_id": "log-session"},
            headers=bearer(user_token),
        )
        assert upload.status_code == 200, upload.text
        file_url = upload.json()["data"]["file_url"]
        sig = parse_qs(urlsplit(file_url).query)["sig"][0]
        assert (await client.get(file_url)).status_code == 200
    async with websockets.connect(ws_url(base, f"token={user_token}")) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 30)) == {"type": "ready"}
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(ws_url(base, f"token={forged}")):
            pass
    return [user_token, forged, sig, *named.values()]


COMMANDS: dict[str, Callable[[int], list[str]]] = {
    "run_server.py": lambda port: [sys.executable, str(ROOT / "run_server.py")],
    "uvicorn c_app.main:app": lambda port: [
        sys.executable,
        "-m",
        "uvicorn",
        "c_app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ],
}


@real_server_only_once
@pytest.mark.parametrize("how", list(COMMANDS))
async def test_no_log_line_carries_a_credential(tmp_path: Path, how: str) -> None:
    port = free_port()
    with server_process(COMMANDS[how](port), tmp_path, port) as (base, log):
        secrets = await leak_credentials(base)
        # The access log did record these requests (redacted), so the check below reads real lines.
        wait_for_line(log, '"GET /static/uploads/')
        wait_for_line(log, f'"WebSocket {WS_PATH}?token=')
        wait_for_line(log, "/chat?user=u&token=")
    text = log.read_text(errors="replace")
    for secret in secrets:
        leaking = [line for line in text.splitlines() if secret in line]
        assert not leaking, leaking


def test_redaction_filter_is_on_uvicorn_and_our_loggers(make_settings: Callable[..., Settings]) -> None:
    from c_app.privacy.logfilter import RedactSecrets

    create_app(make_settings())
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    access = logging.getLogger("uvicorn.access")
    handler = Keep()
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:1",
            "GET",
            "/x?user=u&token=TOK-1&Sig=SIG-2&page=2",
            "1.1",
            200,
        )
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    assert seen and "TOK-1" not in seen[0] and "SIG-2" not in seen[0], seen
    assert "user=u" in seen[0] and "page=2" in seen[0], seen
    # The same filter on our own records (configure_logging puts it on every handler).
    record = logging.LogRecord(
        "c_app.x", logging.WARNING, __file__, 1, "%s failed", ("/y?api_key=AK-3",), None
    )
    record.msg = "GET /z?password=PW-4&client_secret=CS-5&q=ok %s failed"
    assert RedactSecrets().filter(record)
    message = record.getMessage()
    assert all(s not in message for s in ("AK-3", "PW-4", "CS-5")) and "q=ok" in message, message


# --- 6. WebSocket: token expiry and Origin -----------------------------------------------------


async def test_websocket_closes_when_its_token_expires(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**jwt_settings(ws_heartbeat_seconds=0.5))
    with serve(create_app(settings)) as base:
        short = token("expiring-user", ttl=3)  # made once the server is up: start-up takes seconds
        async with websockets.connect(ws_url(base, f"token={short}")) as ws:
            assert json.loads(await ws.recv()) == {"type": "ready"}

            async def answer_heartbeats() -> None:
                # A live client: heartbeats alone must not keep an expired token's socket open.
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for raw in ws:
                        if json.loads(raw)["type"] == "ping":
                            await ws.send(json.dumps({"type": "pong"}))

            await asyncio.wait_for(answer_heartbeats(), 30)
            await asyncio.wait_for(ws.wait_closed(), 30)
        assert ws.close_code == 1008
        assert ws.close_reason == "token expired"


async def test_websocket_answers_no_turn_after_its_token_expires(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(**jwt_settings())
    app = create_app(settings)
    with serve(app) as base:
        expires = int(time.time()) + 3
        short = jwt.encode({"sub": "late-user", "exp": expires}, SECRET, algorithm="HS256")
        async with websockets.connect(ws_url(base, f"token={short}")) as ws:
            assert json.loads(await ws.recv()) == {"type": "ready"}
            await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(json.dumps({"type": "message", **chat_body("怎么退货", user_id="late-user")}))
            frames: list[dict[str, Any]] = []
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    frames.append(frame)
                    if frame["type"] in ("done", "error"):
                        break
            await asyncio.wait_for(ws.wait_closed(), 30)
        assert not any(frame["type"] in ("delta", "done") for frame in frames), frames
        assert ws.close_code == 1008
    check = create_app(settings)
    async with check.router.lifespan_context(check):
        assert await rows(check, Message) == []


MODES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "none": ({}, {}),
    "api_key": ({"auth_mode": "api_key", "api_keys": API_KEY}, {"X-API-Key": API_KEY}),
    "jwt": (jwt_settings(), bearer(token("alice"))),
}


def refused(answer: dict[str, Any]) -> bool:
    if answer["type"] == "websocket.close":
        return bool(answer["code"] == 1008)
    return answer["type"] == "websocket.http.response.start" and answer["status"] == 403


@pytest.mark.parametrize("mode", list(MODES))
async def test_websocket_refuses_a_foreign_origin(start_app: Any, mode: str) -> None:
    overrides, credentials = MODES[mode]
    app, _client = await start_app(**overrides, cors_origins=["https://shop.example"])

    async def handshake(origin: str | None) -> dict[str, Any]:
        headers = dict(credentials) | ({"Origin": origin} if origin is not None else {})
        return await websocket_handshake(app, WS_PATH, headers=headers)

    for foreign in (
        "https://evil.example",
        "null",
        "http://testserver.evil.example",
        "https://shop.example.evil.example",
        "http://localhost:3000",  # a default origin, but not in this app's list
    ):
        assert refused(await handshake(foreign)), foreign
    # No Origin (a backend, a mobile app), a listed one, and the app's own (the chat page) are fine.
    for fine in (None, "https://shop.example", "https://SHOP.example/", "http://testserver"):
        assert (await handshake(fine))["type"] == "websocket.accept", fine


async def test_websocket_origin_on_the_wire(make_settings: Callable[..., Settings]) -> None:
    with serve(create_app(make_settings())) as base:
        with pytest.raises(websockets.InvalidStatus) as denied:
            async with websockets.connect(ws_url(base), origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert denied.value.response.status_code == 403
        own = base  # the chat page's origin: same host and port as the server
        async with websockets.connect(ws_url(base), origin=own) as ws:  # type: ignore[arg-type]
            assert json.loads(await ws.recv()) == {"type": "ready"}
        async with websockets.connect(ws_url(base), origin="http://localhost:3000") as ws:  # type: ignore[arg-type]
            assert json.loads(await ws.recv()) == {"type": "ready"}


# --- 11. /stats, CORS default, header size -----------------------------------------------------


async def test_stats_belong_to_the_operator_once_auth_is_on(start_app: Any) -> None:
    _app, client = await start_app(**jwt_settings(admin_token=ADMIN))
    assert_envelope(await client.get(STATS), 401, "缺少认证信息")
    assert_envelope(await client.get(STATS, headers=bearer("not-a-token")), 401)
    assert_envelope(await client.get(STATS, headers=bearer(token("alice"))), 403, "无权访问服务统计")
    admin = await client.get(STATS, headers=bearer(ADMIN))
    assert admin.status_code == 200 and "statistics" in admin.json()

    # An API key acts for every customer, but it is a backend's credential, not the operator's.
    _app, client = await start_app(auth_mode="api_key", api_keys=API_KEY, admin_token=ADMIN)
    assert_envelope(await client.get(STATS, headers={"X-API-Key": API_KEY}), 403, "无权访问服务统计")
    assert_envelope(await client.get(STATS, headers=bearer(API_KEY)), 403, "无权访问服务统计")
    assert (await client.get(STATS, headers=bearer(ADMIN))).status_code == 200

    # Without ADMIN_TOKEN nobody reads them once auth is on; with AUTH_MODE=none, anyone (as before).
    _app, client = await start_app(**jwt_settings())
    assert_envelope(await client.get(STATS, headers=bearer(token("alice"))), 403, "无权访问服务统计")
    _app, client = await start_app()
    assert (await client.get(STATS)).status_code == 200


async def test_no_third_party_origin_by_default(monkeypatch: pytest.MonkeyPatch, start_app: Any) -> None:
    monkeypatch.delenv("CORS_ORIGINS", raising=False)
    defaults = Settings(_env_file=None).cors_origins  # type: ignore[call-arg]
    assert defaults and all(urlsplit(origin).hostname in ("localhost", "127.0.0.1") for origin in defaults)
    _app, client = await start_app(cors_origins=defaults)
    preflight = await client.options(
        "/api/v1/chat/stream",
        headers={"Origin": "https://your-domain.com", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


async def test_oversized_request_headers_get_431(start_app: Any) -> None:
    _app, client = await start_app()
    huge = await client.get("/health", headers={"X-Big": "a" * 1024 * 1024})
    assert_envelope(huge, 431, "请求头过大", "HTTPException")
    assert huge.headers["X-Content-Type-Options"] == "nosniff" and huge.headers["X-Request-Id"]
    # Each header under the limit, together over it.
    many = {f"X-Part-{i}": "a" * 4000 for i in range(5)}
    assert_envelope(await client.get("/health", headers=many), 431, "请求头过大")
    # A large JWT (8 KB) still passes.
    assert (await client.get("/health", headers={"Authorization": "Bearer " + "a" * 8000})).status_code == 200
    _app, strict = await start_app(max_header_bytes=4096)
    assert_envelope(await strict.get("/health", headers={"X-Big": "a" * 5000}), 431, "请求头过大")


def _huge_header_refused(base: str) -> None:
    try:
        answer = httpx.get(base + "/health", headers={"X-Big": "a" * 1024 * 1024}, timeout=30)
    except httpx.TransportError:
        return  # the server closed the connection: refused too
    assert answer.status_code in (400, 431), answer.status_code
    assert answer.status_code != 200


async def test_a_real_server_refuses_a_1mb_header(make_settings: Callable[..., Settings]) -> None:
    with serve(create_app(make_settings())) as base:
        await asyncio.to_thread(_huge_header_refused, base)
        big = await asyncio.to_thread(
            lambda: httpx.get(base + "/health", headers={"X-Big": "a" * 64 * 1024}, timeout=30)
        )
        assert_envelope(big, 431, "请求头过大")


@real_server_only_once
def test_run_server_bounds_headers_under_both_parsers(tmp_path: Path) -> None:
    # run_server.py as shipped (httptools when installed), and forced onto h11 with its size limit.
    for http in ("auto", "h11"):
        port = free_port()
        folder = tmp_path / http
        folder.mkdir()
        command = [
            sys.executable,
            "-c",
            (
                "import runpy, uvicorn; real = uvicorn.run; "
                f"uvicorn.run = lambda *a, **k: real(*a, **{{**k, 'http': '{http}'}}); "
                f"runpy.run_path({str(ROOT / 'run_server.py')!r}, run_name='__main__')"
            ),
        ]
        with server_process(command, folder, port) as (base, _log):
            _huge_header_refused(base)
            assert httpx.get(base + "/health", headers={"X-Ok": "a" * 4000}, timeout=30).status_code == 200


@pytest.mark.parametrize("declared", ["²", "١٢٣", "9" * 5000, "-1", "+5", " 5"])
async def test_a_content_length_that_is_not_plain_digits_is_refused_not_a_500(client, declared) -> None:
    async def body() -> Any:
        yield b'{"user_id": "u1"}'

    # httpx would compute its own Content-Length: send the raw header through the ASGI transport.
    response = await client.post(
        "/api/v1/chat/session/create",
        content=body(),
        headers={b"content-length": declared.encode(), b"content-type": b"application/json"},
    )
    assert_envelope(response, 413)
