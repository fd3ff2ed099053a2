"""Hardening found by an attacker's probe: the OpenAI door keeps the id rules (7), update routes keep
their create routes' bounds (8), and the plain stream cannot be ended early by a model (10)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c_app.api.sse import plain_frame
from c_app.db.models import ChatSession, Memory, Message
from c_app.main import create_app
from c_app.schemas.events import DeltaEvent, DoneEvent, ErrorEvent

from .servers import serve
from .utils import assert_envelope, count, rows

COMPLETIONS = "/v1/chat/completions"
STREAM = "/api/v1/chat/stream"
PRIVATE = "/api/v1/chat/memory/private"
KB = "/api/v1/admin/knowledge"
KEY = "sk-hardening-test"


def completion(text: str = "你好", **extra: Any) -> dict[str, Any]:
    return {"model": "x", "messages": [{"role": "user", "content": text}], "user": "u1", **extra}


def header_id(value: str) -> str:
    """The session id from an X-Session-Id response header (RFC 8187 ext-value when not plain ASCII)."""
    if value[:7].upper() == "UTF-8''":
        return unquote(value[7:], encoding="utf-8", errors="strict")
    return value


async def nothing_stored(app) -> None:
    assert await count(app, Message) == 0
    assert await count(app, ChatSession) == 0


# --- 7. the OpenAI door keeps the id rules -------------------------------------------------------

BAD_IDS = [
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\r\nb", id="crlf"),
    pytest.param("a\nb", id="lf"),
    pytest.param("a/b", id="slash"),
    pytest.param("a\x1fb", id="c0"),
    pytest.param("a\x7fb", id="del"),
    pytest.param("a\x85b", id="c1"),
    pytest.param("x" * 129, id="too-long"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "session_id",
    [
        *BAD_IDS,
        pytest.param(123, id="int"),
        pytest.param({"a": 1}, id="dict"),
        pytest.param(["s"], id="list"),
        pytest.param(True, id="bool"),
        pytest.param(1.5, id="float"),
    ],
)
async def test_openai_metadata_session_id_must_be_a_valid_id(app, client, session_id, stream):
    response = await client.post(
        COMPLETIONS, json=completion(stream=stream, metadata={"session_id": session_id})
    )
    assert_envelope(response, 422, error_type="ValidationError")
    await nothing_stored(app)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("a/b", id="slash"),
        pytest.param("a\x1fb", id="c0"),
        pytest.param("a\x7fb", id="del"),
        pytest.param("x" * 129, id="too-long"),
        pytest.param("UTF-8''%ZZ", id="bad-percent"),
        pytest.param("UTF-8''a%2Fb", id="encoded-slash"),
        pytest.param("UTF-8''a%00b", id="encoded-nul"),
        pytest.param("UTF-8''%FF", id="not-utf8"),
    ],
)
async def test_openai_session_header_must_be_a_valid_id(app, client, value):
    response = await client.post(
        COMPLETIONS, json=completion(), headers=[(b"X-Session-Id", value.encode("latin-1"))]
    )
    assert_envelope(response, 422, error_type="ValidationError")
    await nothing_stored(app)


@pytest.mark.parametrize("user", [*BAD_IDS, pytest.param(123, id="int"), pytest.param({"a": 1}, id="dict")])
async def test_openai_user_must_be_a_valid_id(app, client, user):
    response = await client.post(COMPLETIONS, json={**completion(), "user": user})
    assert_envelope(response, 422, error_type="ValidationError")
    await nothing_stored(app)


async def test_openai_default_session_of_a_longest_user_is_refused_not_truncated(app, client):
    response = await client.post(COMPLETIONS, json={**completion(), "user": "u" * 128})
    assert_envelope(response, 400, "会话ID过长")
    await nothing_stored(app)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "body, expected",
    [
        pytest.param(completion(metadata={"session_id": "售后会话-1"}), "售后会话-1", id="metadata"),
        pytest.param({**completion(), "user": "张三"}, "openai-张三", id="default"),
        pytest.param(completion(metadata={"session_id": "UTF-8''x"}), "UTF-8''x", id="looks-encoded"),
        pytest.param(completion(metadata={"session_id": "café"}), "café", id="latin-1"),
    ],
)
async def test_openai_non_ascii_session_id_is_answered_and_encoded_in_the_header(
    app, client, body, expected, stream
):
    response = await client.post(COMPLETIONS, json={**body, "stream": stream})
    assert response.status_code == 200, response.text
    assert response.headers["x-session-id"].isascii()
    assert header_id(response.headers["x-session-id"]) == expected
    [session] = await rows(app, ChatSession)
    assert session.id == expected
    # The header, sent back as it came, names the same session.
    again = await client.post(
        COMPLETIONS, json=body, headers={"X-Session-Id": response.headers["x-session-id"]}
    )
    assert again.status_code == 200, again.text
    assert await count(app, ChatSession) == 1
    assert await count(app, Message, Message.session_id == expected) == 4


async def test_openai_ascii_session_header_is_sent_back_unchanged(client):
    response = await client.post(COMPLETIONS, json=completion(), headers={"X-Session-Id": "sess-1%20a b"})
    assert response.status_code == 200
    assert response.headers["x-session-id"] == "sess-1%20a b"


async def test_openai_raw_utf8_session_header_is_read_as_utf8(app, client):
    response = await client.post(
        COMPLETIONS, json=completion(), headers=[(b"X-Session-Id", "会话一".encode())]
    )
    assert response.status_code == 200, response.text
    assert header_id(response.headers["x-session-id"]) == "会话一"
    assert [s.id for s in await rows(app, ChatSession)] == ["会话一"]


DEEP6 = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"role": "user", "content": "a\x00b"}, id="nul-text"),
        pytest.param({"role": "user", "content": [{"type": "text", "text": "a\x00b"}]}, id="nul-part"),
        pytest.param(
            {"role": "user", "content": [{"type": "text", "text": "x", "n": DEEP6}]}, id="deep-part"
        ),
    ],
)
async def test_openai_bad_message_content_is_refused(app, client, message):
    response = await client.post(COMPLETIONS, json={**completion(), "messages": [message]})
    assert_envelope(response, 422, error_type="ValidationError")
    await nothing_stored(app)


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


BAD_METADATA = [
    pytest.param(deep(60), id="60-deep"),
    pytest.param({f"k{i}": i for i in range(5000)}, id="5000-keys"),
    pytest.param({"note": "a\x00b"}, id="nul-value"),
    pytest.param({"a\x00b": 1}, id="nul-key"),
]


@pytest.mark.parametrize("metadata", BAD_METADATA)
async def test_openai_metadata_is_bounded(app, client, metadata):
    response = await client.post(COMPLETIONS, json=completion(metadata=metadata))
    assert_envelope(response, 422, error_type="ValidationError")
    await nothing_stored(app)


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_crlf_and_cjk_ids_over_a_real_server(make_settings, stream):
    settings = make_settings()
    with serve(create_app(settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            refused = await client.post(
                COMPLETIONS,
                json=completion(stream=stream, metadata={"session_id": "evil\r\nSet-Cookie: a=b"}),
            )
            assert_envelope(refused, 422, error_type="ValidationError")
            assert "set-cookie" not in refused.headers
            answered = await client.post(
                COMPLETIONS, json=completion(stream=stream, metadata={"session_id": "会话"})
            )
            assert answered.status_code == 200, answered.text
            assert header_id(answered.headers["x-session-id"]) == "会话"
            if stream:
                assert answered.text.rstrip().endswith("data: [DONE]")
            # The connection survived: the same client goes on.
            assert (await client.get("/health")).status_code == 200
    check = create_app(settings)
    async with check.router.lifespan_context(check):
        assert [s.id for s in await rows(check, ChatSession)] == ["会话"]


# --- 8. update routes keep the bounds of their create routes ------------------------------------


@pytest.fixture
async def memory(app, client) -> int:
    response = await client.post(
        "/api/v1/chat/memory/add",
        json={"user_id": "u1", "content": "原来的内容", "metadata": {"source": "crm"}},
    )
    assert response.status_code == 200
    return response.json()["data"]["memory_id"]


@pytest.mark.parametrize(
    "body",
    [
        *[pytest.param({"metadata": m.values[0]}, id=m.id) for m in BAD_METADATA],
        pytest.param({"content": "a\x00b"}, id="nul-content"),
        pytest.param({"content": "新内容", "metadata": {"x": "\x00"}}, id="good-content-bad-metadata"),
    ],
)
async def test_private_memory_update_keeps_the_create_bounds(app, client, memory, body):
    before = [(m.content, m.meta, m.updated_at) for m in await rows(app, Memory, Memory.id == memory)]
    response = await client.put(f"{PRIVATE}/u1/{memory}", json=body)
    assert_envelope(response, 422, error_type="ValidationError")
    assert [(m.content, m.meta, m.updated_at) for m in await rows(app, Memory, Memory.id == memory)] == before


async def test_private_memory_update_within_bounds_still_works(app, client, memory):
    response = await client.put(f"{PRIVATE}/u1/{memory}", json={"content": "新内容", "metadata": deep(5)})
    assert response.status_code == 200, response.text
    [row] = await rows(app, Memory, Memory.id == memory)
    assert (row.content, row.meta) == ("新内容", deep(5))


async def answered_session(client) -> int:
    response = await client.post(
        STREAM, json={"user_id": "u1", "session_id": "s1", "message": {"content": "你好"}}
    )
    assert response.status_code == 200
    page = await client.get("/api/v1/chat/session/s1/messages")
    return next(m["id"] for m in page.json()["messages"] if m["role"] == "assistant")


async def test_session_rename_refuses_nul(app, client):
    await answered_session(client)
    [before] = await rows(app, ChatSession)
    response = await client.patch("/api/v1/chat/session/s1", json={"title": "新\x00标题"})
    assert_envelope(response, 422, error_type="ValidationError")
    [after] = await rows(app, ChatSession)
    assert after.title == before.title


async def test_feedback_comment_refuses_nul(app, client):
    message_id = await answered_session(client)
    response = await client.post(
        f"/api/v1/chat/message/{message_id}/feedback", json={"rating": "like", "comment": "好\x00"}
    )
    assert_envelope(response, 422, error_type="ValidationError")
    [row] = await rows(app, Message, Message.id == message_id)
    assert (row.feedback, row.feedback_comment) == (None, None)


ENTRY = {
    "question": "支持货到付款吗？",
    "similar_questions": ["能货到付款吗"],
    "answer": "目前暂不支持。",
    "category": "支付",
}

BAD_ENTRY_FIELDS = [
    pytest.param({"question": "问\x00题"}, id="question"),
    pytest.param({"answer": "答\x00案"}, id="answer"),
    pytest.param({"title": "标\x00题"}, id="title"),
    pytest.param({"category": "分\x00类"}, id="category"),
    pytest.param({"external_id": "e\x00"}, id="external-id"),
    pytest.param({"similar_questions": ["相似\x00问题"]}, id="similar"),
    *[pytest.param({"metadata": m.values[0]}, id=f"metadata-{m.id}") for m in BAD_METADATA],
]


@pytest.fixture
async def admin(start_app):
    app, client = await start_app(admin_token="t0k", load_sample_kb=False, index_refresh_interval=3600)
    client.headers.update({"Authorization": "Bearer t0k"})
    return app, client


def entry_state(row: Memory) -> tuple[Any, ...]:
    return (
        row.external_id,
        row.title,
        row.category,
        row.question,
        row.similar_questions,
        row.content,
        row.meta,
    )


@pytest.mark.parametrize("fields", BAD_ENTRY_FIELDS)
async def test_knowledge_entry_create_and_update_refuse_nul_and_unbounded_metadata(admin, fields):
    app, client = admin
    created = await client.post(KB, json=ENTRY)
    assert created.status_code == 200, created.text
    entry_id = created.json()["data"]["id"]
    before = [entry_state(r) for r in await rows(app, Memory, Memory.scope == "public")]

    assert_envelope(await client.post(KB, json={**ENTRY, **fields}), 422, error_type="ValidationError")
    assert_envelope(await client.put(f"{KB}/{entry_id}", json=fields), 422, error_type="ValidationError")
    assert [entry_state(r) for r in await rows(app, Memory, Memory.scope == "public")] == before


async def test_knowledge_import_reports_a_nul_row_and_keeps_the_rest(admin):
    app, client = admin
    lines = [json.dumps(ENTRY), json.dumps({**ENTRY, "question": "另一个\x00问题"})]
    response = await client.post(
        f"{KB}/import", files={"file": ("kb.jsonl", "\n".join(lines).encode(), "application/jsonl")}
    )
    assert response.status_code == 200, response.text
    report = response.json()["data"]
    assert (report["created"], report["failed"]) == (1, 1)
    assert report["errors"][0]["line"] == 2 and "空字符" in report["errors"][0]["error"]
    assert [r.question for r in await rows(app, Memory, Memory.scope == "public")] == [ENTRY["question"]]


async def test_hit_test_refuses_nul(admin):
    _, client = admin
    response = await client.post(f"{KB}/hit-test", json={"query": "发票\x00"})
    assert_envelope(response, 422, error_type="ValidationError")


# --- 10. a model cannot end the plain stream early ----------------------------------------------


def read_plain(body: str) -> tuple[str, list[str], list[str]]:
    """A client using the seed's plain rules, strictly: each `data:` event is `[DONE]` (the end),
    an error object, or a piece of answer whose `\\n`/`\\r` escapes it undoes. Returns the answer,
    the control events and the raw answer events."""
    text: list[str] = []
    control: list[str] = []
    pieces: list[str] = []
    for block in body.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: ") and "\n" not in block and "\r" not in block, block
        data = block[len("data: ") :]
        if data.strip() == "[DONE]" or data.lstrip().startswith('{"error"'):
            control.append(data)
            continue
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        assert not isinstance(parsed, dict | list), f"an answer piece reads as JSON: {data!r}"
        pieces.append(data)
        text.append(data.replace("\\n", "\n").replace("\\r", "\r"))
    return "".join(text), control, pieces


@pytest.mark.parametrize(
    "text",
    [
        "您好，欢迎光临！",
        "第一行\n第二行\r\n第三行",
        " 前导空格",
        "C:\\Users\\me",
        "a\\tb",
        "价格{含税}",
        "见[1]",
        "\\",
        "x\\",
    ],
)
def test_plain_frame_keeps_the_seed_bytes_for_ordinary_text(text):
    escaped = text.replace("\n", "\\n").replace("\r", "\\r")
    assert plain_frame(DeltaEvent(text=text)) == f"data: {escaped}\n\n"


@pytest.mark.parametrize(
    "text, events",
    [
        ("[DONE]", ["[", "DONE]"]),
        ('{"error": "x"}', ["{", '"error": "x"}']),
        (' {"error": "x"}', [" {", '"error": "x"}']),
        ("\u3000[DONE]", ["\u3000[", "DONE]"]),
        ("{{[DONE]", ["{", "{", "[", "DONE]"]),
        ("[1, 2]", ["[", "1, 2]"]),
        ("{", ["{"]),
        ("a\\nb", ["a\\", "nb"]),
        ("\\n\\r", ["\\", "n\\", "r"]),
        ("a\\\nb", ["a\\\\nb"]),
    ],
)
def test_plain_frame_splits_pieces_that_look_like_control_events(text, events):
    frame = plain_frame(DeltaEvent(text=text))
    assert frame == "".join(f"data: {e}\n\n" for e in events)
    answer, control, _ = read_plain(frame)
    assert (answer, control) == (text, [])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.sampled_from('[]{}DONE"error: \\nr\n\r\u3000\ufeff好a,1'), min_size=1), max_size=5
    )
)
def test_plain_framing_round_trips_any_deltas(deltas):
    body = "".join(plain_frame(DeltaEvent(text=d)) or "" for d in deltas)
    body += plain_frame(ErrorEvent(message="出错了")) or ""
    body += plain_frame(DoneEvent(message_id=1, engine="llm", status="complete")) or ""
    answer, control, _ = read_plain(body)
    assert answer == "".join(deltas)
    assert control == ['{"error": "出错了"}', "[DONE]"]


@pytest.fixture
async def llm_client(start_app, standin):
    return await start_app(llm_api_key=KEY, llm_base_url=standin.base_url, llm_timeout=5, llm_max_retries=0)


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param(["您好，答案是", "[DONE]", "后面还有内容", "。"], id="done"),
        pytest.param(["前" * 14, '{"error": "x"}', "后面还有内容。"], id="error"),
        pytest.param(['{"error": "x"}', "后面还有"], id="error-first"),
        pytest.param(["文件在 C:\\new 下", "。"], id="backslash-n"),
    ],
)
async def test_model_deltas_cannot_end_the_plain_stream_early(llm_client, standin, pieces):
    app, client = llm_client
    size = len(pieces[0])
    assert all(len(p) == size for p in pieces[:-1]), "the stand-in cuts its text into equal chunks"
    standin.script.append({"kind": "stream", "text": "".join(pieces), "chunk": size})
    response = await client.post(
        STREAM, json={"user_id": "u1", "session_id": "s1", "message": {"content": "你好"}}
    )
    assert response.status_code == 200
    answer, control, _ = read_plain(response.text)
    assert answer == "".join(pieces)
    assert control == ["[DONE]"]
    assert response.text.endswith("data: [DONE]\n\n")
    [stored] = await rows(app, Message, Message.role == "assistant")
    assert (stored.content, stored.status) == ("".join(pieces), "complete")
