"""Sensitive words (敏感词): blocked questions, censored answers (across chunk boundaries), the
list reloaded when its file changes, malformed lists refused, the counts in /stats."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from c_app.db.models import Memory, Message, ModerationEvent
from c_app.engines.base import Delta, TurnContext
from c_app.privacy.sensitive import SensitiveWords, WordList, fold, parse
from c_app.schemas.customer import ChatMessage
from c_app.schemas.events import DeltaEvent, DoneEvent

from .utils import answer_text, chat_body, count, rows, sse_data

STREAM = "/api/v1/chat/stream"
STATS = "/api/v1/chat/stats"
KEY = "sk-test-sensitive"
REPLY = "抱歉，您的消息包含不当内容，请修改后再试。"
LOGGER = "c_app.privacy.sensitive"


def write_list(path: Path, text: str | bytes, *, bump: int = 0) -> Path:
    """Write the list file; `bump` moves its mtime forward by that many seconds (a change the
    reload check sees even when the size is the same and the clock's resolution is coarse)."""
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    if bump:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))
    return path


@pytest.fixture
def word_file(tmp_path: Path) -> Path:
    return write_list(tmp_path / "sensitive.txt", "# 测试词表\n\n敏感词\n违禁品\nBad\n")


@pytest.fixture
async def guarded(start_app: Any, word_file: Path) -> Any:
    """The offline app with the word list on, re-read on every use (interval 0: no clock involved)."""
    return await start_app(sensitive_words_file=str(word_file), sensitive_reload_interval=0)


@pytest.fixture
async def guarded_llm(start_app: Any, standin: Any, word_file: Path) -> Any:
    return await start_app(
        sensitive_words_file=str(word_file),
        sensitive_reload_interval=0,
        llm_api_key=KEY,
        llm_base_url=standin.base_url,
        llm_max_retries=0,
    )


async def stats(client: Any) -> dict[str, int]:
    return (await client.get(STATS)).json()["statistics"]


# --- matching: what is folded -------------------------------------------------------------------


def test_list_file_parsing_ignores_comments_blank_lines_and_line_ends() -> None:
    words, skipped = parse("\ufeff# 注释\n\n敏感词\r\n  违禁品  \n#不是词\n!?\n--\n".encode())
    assert words == ["敏感词", "违禁品", "!?"]  # "!?" are sentence breaks: kept, so matchable
    assert skipped == [7]  # "--" folds to nothing


@pytest.mark.parametrize(
    "text",
    [
        "敏感词",
        "ＢＡＤＷＯＲＤ",
        "badword",
        "BadWord",
        "敏 感 词",
        "敏-感-词",
        "敏*感*词",
        "敏\u200b感\ufe0f词",
        "敏\u3000感词",
    ],
)
def test_case_width_and_interposed_characters_are_folded(text: str) -> None:
    listed = WordList(["敏感词", "BadWord"])
    scan = listed.scan(f"前{text}后")
    assert scan.hits == 1
    assert scan.text == "前" + "*" * len(text) + "后"  # one mask character per original character


def test_no_match_across_a_sentence_break_and_none_without_the_word() -> None:
    listed = WordList(["法轮", "敏感词"])
    assert listed.scan("这个方法。轮到你了").hits == 0
    assert listed.scan("敏感，词").hits == 0
    assert listed.scan("很敏感的话题").hits == 0
    assert fold("Ａ，b ㈱")[0] == "a,b株"


def test_overlapping_words_each_count_and_words_are_reported_once() -> None:
    listed = WordList(["敏感", "敏感词", "感词"])
    scan = listed.scan("敏感词和敏感")
    assert scan.hits == 4  # 敏感, 敏感词, 感词, 敏感: every occurrence of every listed word
    assert scan.words == ["感词", "敏感", "敏感词"]
    assert scan.text == "***和**"


# --- the streaming censor: chunk boundaries and the hold-back -------------------------------------

WORDS = ["敏感词", "违禁品", "ab"]
TEXT = "您好敏感词是ab违禁品再见"
MASKED = "您好***是**" + "***" + "再见"


def run_censor(chunks: list[str], words: list[str] = WORDS) -> tuple[list[str], Any]:
    """Feed the chunks; after every feed the text held back is at most longest − 1 characters and
    what was returned so far is a prefix of the final masked text."""
    listed = WordList(words)
    censor = listed.censor()
    deltas: list[str] = []
    received = ""
    for chunk in chunks:
        received += chunk
        deltas.append(censor.feed(chunk))
        assert len(censor.held) <= listed.longest - 1, (chunks, censor.held)
        assert len("".join(deltas)) == len(received) - len(censor.held)
    deltas.append(censor.flush())
    assert censor.held == ""
    return deltas, censor


@pytest.mark.parametrize("split", range(len(TEXT) + 1))
def test_a_word_split_at_every_position_is_masked(split: int) -> None:
    deltas, censor = run_censor([TEXT[:split], TEXT[split:]])
    assert "".join(deltas) == MASKED
    assert censor.hits == 3 and censor.matched_words == sorted(WORDS)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 100])
def test_every_chunk_size_gives_the_same_answer_and_hits(size: int) -> None:
    chunks = [TEXT[i : i + size] for i in range(0, len(TEXT), size)]
    deltas, censor = run_censor(chunks)
    assert "".join(deltas) == MASKED
    assert censor.hits == 3


def test_every_three_way_split_of_a_word() -> None:
    text = "xx敏感词yy"
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            deltas, censor = run_censor([text[:i], text[i:j], text[j:]])
            assert "".join(deltas) == "xx***yy" and censor.hits == 1, (i, j)


def test_the_emitted_deltas_one_character_at_a_time() -> None:
    # Longest word 3: two characters held, no more; a matched word leaves masked.
    deltas, _ = run_censor(list("ab敏感词cd"), ["敏感词"])
    assert deltas == ["", "", "a", "b", "*", "*", "*", "cd"]


def test_a_single_character_word_holds_nothing_back() -> None:
    deltas, censor = run_censor(list("一个坏字"), ["坏"])
    assert deltas == ["一", "个", "*", "字", ""] and censor.hits == 1


def test_interposed_spaces_are_held_with_the_characters_around_them() -> None:
    listed = WordList(["敏感词"])
    censor = listed.censor()
    out = [censor.feed(piece) for piece in ["好 ", "敏 ", "感 ", "词 ", "完"]]
    out.append(censor.flush())
    assert "".join(out) == "好 ***** 完"
    assert censor.hits == 1
    # Held: the last longest − 1 matchable characters, with the spaces among them.
    assert out == ["", "", "好 ", "**", "**", "* 完"]


# --- the list file: reload, refusals ------------------------------------------------------------


async def test_reload_on_change_swaps_the_list(tmp_path: Path) -> None:
    path = write_list(tmp_path / "w.txt", "旧词\n")
    words = SensitiveWords(path, reload_interval=0)
    first = words.current
    assert first is not None and first.scan("旧词").hits == 1
    assert await words.refresh() is first  # unchanged file: not read again
    write_list(path, "新词\n", bump=5)
    second = await words.refresh()
    assert second is not first and second is not None
    assert second.scan("旧词").hits == 0 and second.scan("新词").hits == 1
    assert first.scan("旧词").hits == 1  # a list in use (a streaming answer's) is never changed


async def test_the_file_is_looked_at_only_every_interval(tmp_path: Path) -> None:
    now = [0.0]
    path = write_list(tmp_path / "w.txt", "旧词\n")
    words = SensitiveWords(path, reload_interval=2.0, clock=lambda: now[0])
    write_list(path, "新词\n", bump=5)
    now[0] = 1.9
    assert (await words.refresh()).scan("旧词").hits == 1  # type: ignore[union-attr]
    now[0] = 2.0
    assert (await words.refresh()).scan("新词").hits == 1  # type: ignore[union-attr]


BAD_FILES = {
    "not_utf8": ("好词\n坏词\n".encode() + b"\xff\xfe\n", 3, "not valid UTF-8"),
    "line_too_long": ("好词\n" + "长" * 101 + "\n", 2, "longer than 100"),
    "too_many_words": ("".join(f"词{i}\n" for i in range(6)), 6, "more than 5 words"),
}


@pytest.mark.parametrize("case", BAD_FILES)
async def test_a_malformed_list_is_refused_and_the_previous_one_stays(
    tmp_path: Path, caplog: Any, case: str
) -> None:
    data, line, reason = BAD_FILES[case]
    path = write_list(tmp_path / "w.txt", "旧词\n")
    words = SensitiveWords(path, reload_interval=0, max_words=5)
    before = words.current
    write_list(path, data, bump=5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert await words.refresh() is before
        assert await words.refresh() is before  # refused once: not read (nor logged) again until it changes
    [record] = [r for r in caplog.records if r.name == LOGGER]
    message = record.getMessage()
    assert record.levelno == logging.ERROR
    assert str(path) in message and f"line {line}" in message and reason in message
    assert "previous list" in message
    assert "好词" not in message and "坏词" not in message and "长长" not in message and "词1" not in message


async def test_a_missing_file_keeps_the_list_then_a_fixed_file_is_taken(tmp_path: Path, caplog: Any) -> None:
    path = write_list(tmp_path / "w.txt", "旧词\n")
    words = SensitiveWords(path, reload_interval=0)
    path.unlink()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert (await words.refresh()).scan("旧词").hits == 1  # type: ignore[union-attr]
    assert any("cannot be read" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    write_list(path, "新词\n")
    assert (await words.refresh()).scan("新词").hits == 1  # type: ignore[union-attr]


async def test_a_bad_file_at_start_up_means_no_list_a_loud_log_and_the_service_starts(
    start_app: Any, tmp_path: Path, caplog: Any
) -> None:
    path = write_list(tmp_path / "w.txt", "敏感词\n" + "长" * 101 + "\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        app, client = await start_app(sensitive_words_file=str(path), sensitive_reload_interval=0)
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.ERROR and "line 2" in record.getMessage()
    assert "NO sensitive-word checks" in record.getMessage()
    assert app.state.services.chat.sensitive.current is None
    response = await client.post(STREAM, json=chat_body("敏感词"))
    assert answer_text(response.text) != REPLY
    assert await count(app, ModerationEvent) == 0
    # fixed without a restart
    write_list(path, "敏感词\n", bump=5)
    assert answer_text((await client.post(STREAM, json=chat_body("敏感词"))).text) == REPLY


# --- through the app -----------------------------------------------------------------------------


async def test_a_blocked_question_gets_the_fixed_reply_without_the_model(
    guarded_llm: Any, standin: Any
) -> None:
    app, client = guarded_llm
    response = await client.post(STREAM, json=chat_body("请问ｂＡＤ和敏 感 词怎么买"))

    assert answer_text(response.text) == REPLY
    assert standin.requests == []  # no model call (and no retrieval)
    question, reply = await rows(app, Message)
    assert (question.role, question.status, question.content) == (
        "user",
        "blocked",
        "请问ｂＡＤ和敏 感 词怎么买",
    )
    assert (reply.role, reply.status, reply.engine, reply.content) == (
        "assistant",
        "blocked",
        "moderation",
        REPLY,
    )
    [event] = await rows(app, ModerationEvent)
    assert (event.direction, event.hits, event.words) == ("question", 2, ["Bad", "敏感词"])
    assert (event.user_id, event.session_id, event.message_id) == ("user123", "session456", question.id)
    assert await count(app, Memory, Memory.scope == "chat") == 0  # the exchange is not remembered
    session = (await client.get("/api/v1/chat/sessions/user123")).json()
    title = json.dumps(session, ensure_ascii=False)
    assert "请问***和*****怎么买" in title and "敏" not in title and "ｂＡＤ" not in title  # masked

    # The next turn: the blocked message and its reply are not sent to the model as history.
    standin.script.append({"kind": "stream", "text": "您好。"})
    await client.post(STREAM, json=chat_body("你好"))
    [request] = standin.requests
    assert all("敏感词" not in str(m["content"]) and m["content"] != REPLY for m in request["messages"])

    figures = await stats(client)
    assert (figures["sensitive_hits"], figures["blocked_messages"]) == (2, 1)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4])
async def test_the_models_answer_is_censored_across_chunk_boundaries(
    guarded_llm: Any, standin: Any, chunk: int
) -> None:
    app, client = guarded_llm
    standin.script.append({"kind": "stream", "text": "您好，敏感词和违禁品不卖。", "chunk": chunk})
    response = await client.post(STREAM, json=chat_body("你们卖什么"))

    deltas = [d for d in sse_data(response.text) if not d.startswith("{") and d != "[DONE]"]
    assert "".join(deltas) == "您好，***和***不卖。"
    assert all("敏" not in d and "禁" not in d for d in deltas)
    if chunk == 1:
        # Longest word 3 characters: two held back, the rest sent chunk by chunk, the tail at the end.
        assert deltas == ["您", "好", "，", "*", "*", "*", "和", "*", "*", "*", "不", "卖。"]
    [answer] = await rows(app, Message, Message.role == "assistant")
    assert (answer.status, answer.content) == ("complete", "您好，***和***不卖。")
    [event] = await rows(app, ModerationEvent)
    assert (event.direction, event.hits, event.words, event.message_id) == (
        "answer",
        2,
        ["敏感词", "违禁品"],
        answer.id,
    )
    assert [m.status for m in await rows(app, Message, Message.role == "user")] == ["complete"]
    figures = await stats(client)
    assert (figures["sensitive_hits"], figures["blocked_messages"]) == (2, 0)


async def test_a_cut_stream_keeps_the_held_tail_censored(guarded_llm: Any, standin: Any) -> None:
    app, client = guarded_llm
    standin.script.append({"kind": "cut", "text": "请看违禁品", "chunk": 1})
    data = sse_data((await client.post(STREAM, json=chat_body("看什么"))).text)
    assert data[-1] == "[DONE]" and json.loads(data[-2]) == {"error": "处理聊天请求时发生错误，请稍后重试"}
    assert "".join(data[:-2]) == "请看***"
    [answer] = await rows(app, Message, Message.role == "assistant")
    assert (answer.status, answer.content) == ("partial", "请看***")


class ScriptedEngine:
    """Yields the chunks; before each one, checks what the client has received so far: never more
    than longest − 1 characters behind what the engine produced."""

    name = "scripted"

    def __init__(self, chunks: list[str], received: list[str], hold: int) -> None:
        self.chunks = chunks
        self.received = received
        self.hold = hold
        self.produced = ""

    async def stream(self, turn: TurnContext) -> AsyncIterator[Any]:
        for chunk in self.chunks:
            assert len("".join(self.received)) >= len(self.produced) - self.hold
            self.produced += chunk
            yield Delta(text=chunk)

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("split", range(len("好敏感词好")))
async def test_the_hold_back_through_the_chat_service(guarded: Any, split: int) -> None:
    app, _ = guarded
    chat = app.state.services.chat
    text = "好敏感词好"
    chunks = [c for c in (text[:split], *text[split:]) if c]
    received: list[str] = []
    assert chat.sensitive.current.longest == 3
    chat.engine = ScriptedEngine(chunks, received, hold=2)
    turn = await chat.prepare(user_id="u1", session_id="s1", message=ChatMessage(role="user", content="你好"))
    async for event in chat.answer(turn):
        if isinstance(event, DeltaEvent):
            received.append(event.text)
        elif isinstance(event, DoneEvent):
            assert event.engine == "scripted" and event.status == "complete"
    assert "".join(received) == "好***好"
    [event_row] = await rows(app, ModerationEvent)
    assert (event_row.direction, event_row.hits) == ("answer", 1)


async def test_the_offline_answer_from_the_knowledge_base_is_censored(start_app: Any, tmp_path: Path) -> None:
    path = write_list(tmp_path / "w.txt", "无理由\n")
    app, client = await start_app(sensitive_words_file=str(path), sensitive_reload_interval=0)
    response = await client.post(STREAM, json=chat_body("买的东西不想要了怎么退货？"))

    data = sse_data(response.text)
    answer = answer_text(response.text)
    assert "7天***退货" in answer and "无理由" not in answer
    assert "无理由" not in response.text  # nor in the sources or the suggested questions
    [stored] = await rows(app, Message, Message.role == "assistant")
    assert stored.engine == "knowledge_base" and "无理由" not in stored.content
    assert "无理由" not in json.dumps(stored.sources, ensure_ascii=False)
    [event] = await rows(app, ModerationEvent)
    assert event.direction == "answer" and event.words == ["无理由"] and event.hits >= 1
    assert len(data) > 2


async def test_the_list_is_reloaded_without_a_restart(guarded: Any, word_file: Path) -> None:
    app, client = guarded
    assert answer_text((await client.post(STREAM, json=chat_body("有敏感词吗"))).text) == REPLY
    write_list(word_file, "新禁词\n", bump=5)
    assert answer_text((await client.post(STREAM, json=chat_body("有敏感词吗"))).text) != REPLY
    assert answer_text((await client.post(STREAM, json=chat_body("有新 禁 词吗"))).text) == REPLY
    events = await rows(app, ModerationEvent)
    assert [(e.direction, e.words) for e in events] == [("question", ["敏感词"]), ("question", ["新禁词"])]
    assert (await stats(client))["blocked_messages"] == 2


async def test_a_malformed_reload_keeps_the_list_in_force(guarded: Any, word_file: Path, caplog: Any) -> None:
    app, client = guarded
    write_list(word_file, b"\xff\xfe\xfd", bump=5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        response = await client.post(STREAM, json=chat_body("有违禁品吗"))
    assert answer_text(response.text) == REPLY
    assert any(
        r.levelno == logging.ERROR and str(word_file) in r.getMessage() and "line 1" in r.getMessage()
        for r in caplog.records
    )
    [event] = await rows(app, ModerationEvent)
    assert event.words == ["违禁品"]


async def test_no_list_no_checks_and_no_events(app_client: Any) -> None:
    app, client = app_client
    assert app.state.services.chat.sensitive is None
    response = await client.post(STREAM, json=chat_body("敏感词违禁品"))
    assert answer_text(response.text) != REPLY
    assert await count(app, ModerationEvent) == 0
    assert [m.status for m in await rows(app, Message)] == ["complete", "complete"]
    figures = await stats(client)
    assert (figures["sensitive_hits"], figures["blocked_messages"]) == (0, 0)
