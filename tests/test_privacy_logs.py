"""Logs and errors never carry personal data at INFO or above (c_app/privacy/logfilter.py).

Turns carrying every kind of value (the user id an e-mail address, the session id a phone
number) are driven through the offline responder and the stand-in model, with failures that log
tracebacks holding the values (a storage error quoting its parameters, a model that fails, a 500)
while the root logger captures at DEBUG; every INFO+ line is then searched for the values. Once
more against a real server process (run_server.py), whose stderr holds uvicorn's access log too.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from c_app.privacy.logfilter import MaskPersonalData, install_log_filters, mask_record

from .conftest import BACKEND
from .servers import free_port
from .utils import answer_text, chat_body

ROOT = Path(__file__).resolve().parent.parent
STREAM = "/api/v1/chat/stream"
KEY = "sk-test-secret-9f8e7d6c"

PHONE = "13812345678"
ID_CARD = "110105199003070017"
CARD = "6222021234567894"
EMAIL = "zhang.san@example.com"
LANDLINE = "010-12345678"
PLATE = "京A12345"
ROAD = "文三路100号"
TEXT = (
    f"我的手机{PHONE}，身份证{ID_CARD}，银行卡{CARD}，邮箱{EMAIL}，座机{LANDLINE}，车牌{PLATE}，"
    f"地址浙江省杭州市西湖区{ROAD}，怎么退货"
)
USER = EMAIL  # user ids and session ids are often personal data themselves
SESSION = PHONE
LEAKS = [PHONE, ID_CARD, CARD, EMAIL, "zhang.san%40example.com", "12345678", PLATE, ROAD, "文三路"]


def leaks_in(lines: list[str]) -> list[tuple[str, str]]:
    return [(value, line) for line in lines for value in LEAKS if value in line]


def info_lines(caplog: Any) -> list[str]:
    return [caplog.handler.format(r) for r in caplog.records if r.levelno >= logging.INFO]


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The root logger captured at DEBUG, through the filter configure_logging puts on the app's handlers."""
    caplog.set_level(logging.DEBUG)
    mask = MaskPersonalData()
    caplog.handler.addFilter(mask)
    yield caplog
    caplog.handler.removeFilter(mask)


def raising_client(app: Any) -> httpx.AsyncClient:
    """A client that, like a real server, gets the 500 response rather than the re-raised exception."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://testserver"
    )


# --- the filter itself -----------------------------------------------------------------------


def record(msg: Any, args: Any = (), level: int = logging.INFO, exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord("c_app.test", level, __file__, 1, msg, args, exc_info)


def test_message_args_exception_and_stack_are_masked() -> None:
    rec = record("turn for %s in session %s", (EMAIL, "abc"))
    mask_record(rec)
    assert (rec.msg, rec.args) == ("turn for %s in session %s", ("[邮箱1]", "abc"))  # shape kept
    rec = record("card %d declined", (int(CARD),))  # not a string: the masked line replaces msg and args
    mask_record(rec)
    assert rec.getMessage() == "card [银行卡1] declined" and rec.args is None
    rec = record(f"phone {PHONE}")
    mask_record(rec)
    assert rec.getMessage() == "phone [手机号1]"
    try:
        raise RuntimeError(f"INSERT failed [parameters: ('{TEXT}',)]")
    except RuntimeError:
        rec = record("could not store", exc_info=sys.exc_info())
    rec.stack_info = f"Stack (most recent call last):\n  saving {ID_CARD}"
    mask_record(rec)
    line = logging.Formatter().format(rec)
    assert "RuntimeError: INSERT failed" in line and "[身份证1]" in line
    assert not leaks_in([line])


def test_access_log_records_keep_their_five_args_and_escapes_are_seen_through() -> None:
    args = (
        "127.0.0.1:5000",
        "GET",
        "/api/v1/chat/sessions/zhang.san%40example.com?phone=13812345678",
        "1.1",
        200,
    )
    rec = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None
    )
    MaskPersonalData().filter(rec)
    assert isinstance(rec.args, tuple) and len(rec.args) == 5  # uvicorn's access formatter unpacks them
    assert rec.args[2] == "/api/v1/chat/sessions/[邮箱1]?phone=[手机号1]"
    assert not leaks_in([rec.getMessage()])


def test_debug_records_are_left_alone() -> None:
    rec = record("debug %s", (PHONE,), level=logging.DEBUG)
    assert MaskPersonalData().filter(rec) is True
    assert rec.getMessage() == f"debug {PHONE}"


def test_configure_logging_puts_the_filter_on_every_handler_and_on_uvicorn() -> None:
    from c_app.config import Settings
    from c_app.main import configure_logging
    from c_app.privacy.logfilter import RedactSecrets

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    uvicorn = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")]
    targets: list[logging.Filterer] = [*uvicorn, *(h for logger in uvicorn for h in logger.handlers)]
    saved_filters = [target.filters[:] for target in targets]
    root.handlers = []
    try:
        configure_logging(Settings(_env_file=None))  # type: ignore[call-arg]
        handlers = root.handlers[:]
        assert handlers
        for handler in handlers:
            kinds = {type(f) for f in handler.filters}
            assert MaskPersonalData in kinds and RedactSecrets in kinds  # alongside, not instead
        for logger in uvicorn:
            assert any(isinstance(f, MaskPersonalData) for f in logger.filters)
        install_log_filters()  # idempotent
        assert sum(isinstance(f, MaskPersonalData) for f in uvicorn[0].filters) == 1
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        for target, filters in zip(targets, saved_filters, strict=True):
            target.filters = filters


# --- turns in process, root logger at DEBUG --------------------------------------------------


async def test_offline_turns_and_their_failures_log_no_personal_data(
    start_app: Any, captured: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = await start_app()
    services = app.state.services
    response = await client.post(STREAM, json=chat_body(TEXT, user_id=USER, session_id=SESSION))
    assert answer_text(response.text)  # the knowledge-base responder answered

    async def storage_error(*args: Any, **kwargs: Any) -> None:
        # What a database driver's error looks like: the statement's parameters quoted.
        raise RuntimeError(f"INSERT INTO memories (content) VALUES (?) [parameters: ({args!r})]")

    monkeypatch.setattr(services.memory, "exchange", storage_error)
    await client.post(STREAM, json=chat_body(TEXT, user_id=USER, session_id=SESSION))

    async def search_error(user_id: str, query: str, **kwargs: Any) -> None:
        raise RuntimeError(f"search failed for {user_id}: {query}")

    monkeypatch.setattr(services.memory, "search", search_error)
    response = await client.post(STREAM, json=chat_body(TEXT, user_id=USER, session_id=SESSION))
    assert '{"error"' in response.text

    async def list_error(user_id: str, **kwargs: Any) -> None:
        raise RuntimeError(f"no sessions for {user_id} ({PHONE}, {CARD})")

    monkeypatch.setattr(services.sessions, "list_for_user", list_error)
    async with raising_client(app) as raising:
        response = await raising.get(f"/api/v1/chat/sessions/{USER}")
    assert response.status_code == 500

    lines = info_lines(captured)
    assert not leaks_in(lines), leaks_in(lines)
    text = "\n".join(lines)
    # The failures were logged, with their tracebacks, masked.
    assert "could not remember the exchange (session [手机号1])" in text
    assert "chat turn failed (session [手机号1])" in text and "search failed for [邮箱1]" in text
    assert "unhandled error on GET /api/v1/chat/sessions/[邮箱1]" in text and "Traceback" in text
    assert "[身份证1]" in text and "[银行卡1]" in text and "[车牌1]" in text and "[地址1]" in text
    # DEBUG was captured too (and is not checked: it is not masked, nor written in production).
    assert captured.handler.level <= logging.DEBUG


async def test_model_turns_and_failures_log_no_personal_data(
    start_app: Any, standin: Any, captured: Any
) -> None:
    _, client = await start_app(
        llm_api_key=KEY, llm_base_url=standin.base_url, llm_timeout=5, llm_max_retries=0
    )
    standin.script += [
        {"kind": "stream", "text": "好的，您的手机[手机号1]已登记。", "chunk": 2},
        {"kind": "error", "status": 500},  # before the first token: warning, the knowledge base answers
        {"kind": "cut", "text": "退货需要[手机号1", "chunk": 2},  # after it: the turn fails, logged
        {"kind": "tool", "name": "save_customer_fact", "arguments": '{"fact": "手机[手机号1]"}'},
        {"kind": "stream", "text": "已记下。"},
    ]
    for _ in range(4):
        await client.post(STREAM, json=chat_body(TEXT, user_id=USER, session_id=SESSION))
    assert len(standin.requests) == 5

    lines = info_lines(captured)
    assert not leaks_in(lines), leaks_in(lines)
    text = "\n".join(lines)
    assert "model request failed" in text and "chat turn failed (session [手机号1])" in text


# --- a real server process ---------------------------------------------------------------------

_RECORD_START = re.compile(
    r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - \S+ - (?P<ours>[A-Z]+) - |(?P<uvicorn>[A-Z]+):\s)"
)


def records_at_info_or_above(stderr: str) -> list[str]:
    """The records of a log written by our handlers and uvicorn's, tracebacks kept with their record."""
    records: list[tuple[str, list[str]]] = []
    for line in stderr.splitlines():
        start = _RECORD_START.match(line)
        if start:
            records.append((start["ours"] or start["uvicorn"], [line]))
        elif records:
            records[-1][1].append(line)
        else:
            records.append(("UNKNOWN", [line]))  # before any record: checked as well
    return ["\n".join(lines) for level, lines in records if level != "DEBUG"]


@pytest.fixture
def server_process(tmp_path: Path, standin: Any) -> Iterator[tuple[str, Path]]:
    if BACKEND != "sqlite":
        pytest.skip("the real-server test runs once, on the embedded default")
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "MEMORY_DB_PATH": str(tmp_path / "data" / "customer_service.db"),
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "LOG_LEVEL": "debug",
        "LLM_API_KEY": KEY,
        "LLM_BASE_URL": standin.base_url,
        "LLM_MAX_RETRIES": "0",
        "LLM_TIMEOUT": "5",
    }
    env.pop("DATABASE_URL", None)
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run_server.py")], cwd=ROOT, env=env, stdout=stderr, stderr=stderr
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, log.read_text(encoding="utf-8", errors="replace")
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
            yield base, log
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def test_a_real_server_writes_no_personal_data_at_info_or_above(server_process: Any, standin: Any) -> None:
    base, log = server_process
    standin.script += [
        {"kind": "stream", "text": "好的，您的手机[手机号1]已登记。", "chunk": 2},
        {"kind": "error", "status": 500},
        {"kind": "cut", "text": "退货需要", "chunk": 2},
    ]
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(3):
            client.post(STREAM, json=chat_body(TEXT, user_id=USER, session_id=SESSION))
        assert client.get(f"/api/v1/chat/sessions/{USER}").status_code == 200
        assert client.get(f"/api/v1/chat/session/{SESSION}/messages").status_code == 200
        client.get(f"/api/v1/chat/sessions/{USER}", params={"email": EMAIL, "phone": PHONE})
    time.sleep(0.3)  # the last access-log lines
    stderr = log.read_text(encoding="utf-8", errors="replace")
    records = records_at_info_or_above(stderr)
    assert not leaks_in(records), leaks_in(records)
    text = "\n".join(records)
    # The access log and the failure were written, masked.
    assert "/api/v1/chat/sessions/[邮箱1]" in text and "/api/v1/chat/session/[手机号1]/messages" in text
    assert "chat turn failed (session [手机号1])" in text
    assert " - DEBUG - " in stderr  # captured at DEBUG
