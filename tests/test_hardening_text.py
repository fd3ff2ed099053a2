"""Hostile input: text analysis is bounded and linear, CPU work stays off the event loop, the
memory routes are rate limited, and a CSV export holds no spreadsheet formula.

No wall clock here: sizes are asserted, and the event loop's freedom is shown by the order of
events. A gate holds the heavy work (text analysis, Markdown parsing) until the test has seen
/health answer; if that work ran on the event loop, /health could not answer until the gate gave
up waiting (GATE_SECONDS), so it would finish after the heavy work and the test fails.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

from c_app.retrieval import index as index_module
from c_app.retrieval import normalize
from c_app.retrieval import text as text_module
from c_app.retrieval.text import tokenize, words
from c_app.services import knowledge_formats as formats

from .utils import assert_envelope

RETRIEVE = "/api/v1/chat/memory/retrieve"
KB = "/api/v1/admin/knowledge"
GATE_SECONDS = 3.0  # how long a gate waits before giving up (only ever reached when the test fails)


# -- bounded output ------------------------------------------------------------------------------


def test_nfkc_cannot_expand_past_the_bound() -> None:
    # U+2A0C is four characters after NFKC: 10,000 of them were 40,000 characters of analysis.
    out = normalize("⨌" * 10_000)
    assert len(out) <= 10_000
    assert len(out) <= text_module.MAX_TEXT_CHARS
    # U+FDFA is 18 characters after NFKC; 咋 becomes 怎么 (twice as long).
    assert len(normalize("\ufdfa" * 10_000)) <= text_module.MAX_TEXT_CHARS
    assert len(normalize("咋" * 10_000)) <= text_module.MAX_TEXT_CHARS
    assert len(normalize("a" + "⨌" * 9_998 + "a")) <= text_module.MAX_TEXT_CHARS


def test_hostile_runs_normalise_as_before() -> None:
    # The linear rewrites of the patterns keep their results.
    assert normalize("a" + "⨌" * 400 + "a") == "a" + "∫" * 1_600 + "a"
    assert normalize("退款" + "吗" * 1_500 + "x") == "退款" + "吗" * 1_500 + "x"  # not clause-final: kept
    assert normalize("退款" + "吗" * 1_500 + "？") == "退款"  # clause-final: gone
    assert normalize("退款" + "？" * 1_500 + "x") == "退款" + "?" * 1_500 + "x"
    assert normalize("你好" * 900 + "怎么退款") == "怎么退款"
    assert normalize(" " * 1_000 + "1. 怎么退款") == "怎么退款"
    assert normalize("1.2 版本怎么升级") == "1.2 版本怎么升级"


def test_terms_of_a_long_text_are_bounded() -> None:
    terms = tokenize(normalize("".join(chr(0x4E00 + (i * 7919) % 20_000) for i in range(10_000))))
    assert len(terms) <= 10_000  # unbounded: a character and a bigram per character, and words
    # A character, a bigram and at most one word per character of the bounded text.
    assert len(terms) <= 3 * text_module.MAX_TEXT_CHARS


def test_long_text_is_segmented_as_a_whole() -> None:
    # jieba gets a long text in pieces cut before its blocks: the words do not change.
    sentence = "我想问一下订单已经发货了但是物流信息一直没有更新应该怎么办，"
    long_text = sentence * 40 + "谢谢客服。"
    assert len(long_text) > 1_000
    jieba = text_module.get_jieba()
    assert words(long_text) == [w for w in jieba.lcut(long_text) if w.strip() and any(c.isalnum() for c in w)]
    # Without punctuation for 1,000 characters it is cut inside a run, never more than 256 at once.
    assert max(len(piece) for piece in text_module._jieba_pieces("吗" * 1_000)) <= 256


# -- the event loop stays free -------------------------------------------------------------------


class Gate:
    """Holds any call of `target` whose text contains `marker` until `open()` (or GATE_SECONDS)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self._open = threading.Event()

    def wrap(self, target: Callable[..., Any], marker: str) -> Callable[..., Any]:
        def gated(text: str, *args: Any, **kwargs: Any) -> Any:
            if marker in text:
                self.events.append("heavy started")
                self._open.wait(GATE_SECONDS)
                self.events.append("heavy done")
            return target(text, *args, **kwargs)

        return gated

    def open(self) -> None:
        self._open.set()

    async def started(self) -> None:
        for _ in range(int(GATE_SECONDS * 100) + 100):
            if "heavy started" in self.events:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the heavy work never started: {self.events}")


async def health_while_held(client: Any, gate: Gate, *heavy: asyncio.Task[Any]) -> list[Any]:
    """/health while the gate holds the heavy work; then let it go and collect the requests."""
    await gate.started()
    response = await client.get("/health")
    assert response.status_code == 200
    gate.events.append("health done")
    gate.open()
    return list(await asyncio.gather(*heavy))


async def test_a_huge_retrieve_query_leaves_the_loop_free(start_app, monkeypatch) -> None:
    events: list[str] = []
    gate = Gate(events)
    monkeypatch.setattr(index_module, "normalize", gate.wrap(index_module.normalize, "吗吗吗吗"))
    _, client = await start_app()
    heavy = asyncio.create_task(client.post(RETRIEVE, json={"user_id": "u1", "query": "吗" * 1_999 + "x"}))
    (response,) = await health_while_held(client, gate, heavy)
    assert response.status_code == 200
    assert events.index("health done") < events.index("heavy done"), events


async def test_a_huge_memory_update_leaves_the_loop_free(start_app, monkeypatch) -> None:
    _, client = await start_app()
    added = await client.post("/api/v1/chat/memory/add", json={"user_id": "u1", "content": "我住在上海"})
    memory_id = added.json()["data"]["memory_id"]
    assert (
        await client.post(RETRIEVE, json={"user_id": "u1", "query": "上海"})
    ).status_code == 200  # index built

    events: list[str] = []
    gate = Gate(events)
    monkeypatch.setattr(index_module, "normalize", gate.wrap(index_module.normalize, "⨌⨌⨌⨌"))
    content = "a" + "⨌" * 9_998 + "a"  # 30 KB; quadratic in the old trailing-junk pattern

    async def update_then_search() -> list[dict[str, Any]]:
        put = await client.put(f"/api/v1/chat/memory/private/u1/{memory_id}", json={"content": content})
        assert put.status_code == 200
        found = await client.post(RETRIEVE, json={"user_id": "u1", "query": "a", "limit": 5})
        assert found.status_code == 200
        return found.json()["data"]["memories"]

    (memories,) = await health_while_held(client, gate, asyncio.create_task(update_then_search()))
    assert events.index("health done") < events.index("heavy done"), events
    # The update was indexed before the search that followed it (read-your-writes).
    assert [m["id"] for m in memories if m["type"] == "private"] == [memory_id]


async def test_a_markdown_import_is_parsed_off_the_loop(start_app, monkeypatch) -> None:
    events: list[str] = []
    gate = Gate(events)
    monkeypatch.setattr(formats, "parse", gate.wrap(formats.parse, "# a   "))
    _, client = await start_app(admin_token="t0k", load_sample_kb=False)
    hostile = "# a" + " " * 1_500 + "x\n正文\n"  # cubic in the old heading pattern
    upload = {"files": {"file": ("hostile.md", hostile.encode())}}
    heavy = asyncio.create_task(
        client.post(f"{KB}/import", headers={"Authorization": "Bearer t0k"}, **upload)
    )
    (response,) = await health_while_held(client, gate, heavy)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["created"] == 1
    assert events.index("health done") < events.index("heavy done"), events


# -- Markdown headings ---------------------------------------------------------------------------

_OLD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


@pytest.mark.parametrize(
    "line",
    [
        "# 标题",
        "## 怎么退货？ ##",
        "### a #b# ",
        "####### 七级",
        "#没有空格",
        "# ",
        "#  ",
        "# ###",
        "#\t\u3000x\u3000#",
    ],
)
def test_headings_read_as_the_pattern_read_them(line: str) -> None:
    match = _OLD_HEADING.match(line)  # short lines only: the pattern is fine there
    assert formats.parse_heading(line) == ((len(match.group(1)), match.group(2).strip()) if match else None)


def test_a_heading_with_a_long_run_of_spaces() -> None:
    assert formats.parse_heading("# a" + " " * 100_000 + "x") == (1, "a" + " " * 100_000 + "x")
    assert formats.parse_heading("# a" + " " * 100_000 + "#" * 3) == (1, "a")


def test_a_long_paragraph_is_cut_into_chunks() -> None:
    chunks = formats.chunk_text("字" * 100_000)
    assert len(chunks) == 200 and all(len(chunk) == formats.CHUNK_CHARS for chunk in chunks)


# -- CSV formulas --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'", "'=x", "''", "'a", "a=1", ""]
)
def test_csv_cell_escape_round_trips(value: str) -> None:
    cell = formats.escape_cell(value)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert formats.unescape_cell(cell) == value


FORMULAS = [
    {
        "external_id": '=HYPERLINK("http://evil")',
        "title": "+标题",
        "category": "-分类",
        "question": "@SUM(1+1)怎么算？",
        "similar_questions": ["=1+1", "正常问题"],
        "answer": "=cmd|' /C calc'!A0",
    },
    {"question": "'=引号开头", "answer": "'普通引号开头"},
]


async def test_csv_export_escapes_formulas_and_round_trips(start_app) -> None:
    _, client = await start_app(admin_token="t0k", load_sample_kb=False)
    client.headers.update({"Authorization": "Bearer t0k"})
    for entry in FORMULAS:
        (await client.post(KB, json=entry)).raise_for_status()
    original = [json.loads(line) for line in (await client.get(f"{KB}/export")).text.splitlines()]
    assert {e["answer"] for e in original} == {"=cmd|' /C calc'!A0", "'普通引号开头"}

    as_csv = (await client.get(f"{KB}/export", params={"format": "csv"})).text
    cells = [cell for row in csv.reader(io.StringIO(as_csv.removeprefix("\ufeff"))) for cell in row]
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert "'=cmd|' /C calc'!A0" in cells and "''=引号开头" in cells and "''普通引号开头" in cells

    listing = (await client.get(KB, params={"page_size": 100})).json()["data"]
    for item in listing["items"]:
        (await client.delete(f"{KB}/{item['id']}")).raise_for_status()
    response = await client.post(f"{KB}/import", files={"file": ("export.csv", as_csv.encode())})
    assert response.json()["data"]["created"] == 2, response.text
    assert [json.loads(line) for line in (await client.get(f"{KB}/export")).text.splitlines()] == original


# -- rate limits ---------------------------------------------------------------------------------


async def test_private_memory_update_and_delete_are_rate_limited(start_app) -> None:
    _, client = await start_app(rate_limit_memory="2/minute")
    added = await client.post("/api/v1/chat/memory/add", json={"user_id": "u1", "content": "我住在上海"})
    memory_id = added.json()["data"]["memory_id"]
    path = f"/api/v1/chat/memory/private/u1/{memory_id}"
    assert (await client.put(path, json={"content": "我住在北京"})).status_code == 200
    assert_envelope(await client.put(path, json={"content": "我住在广州"}), 429)
    assert_envelope(await client.delete(path), 429)


async def test_retrieve_is_rate_limited(start_app) -> None:
    _, client = await start_app(rate_limit_retrieve="2/minute")
    for _ in range(2):
        assert (await client.post(RETRIEVE, json={"user_id": "u1", "query": "退货"})).status_code == 200
    refused = await client.post(RETRIEVE, json={"user_id": "u1", "query": "退货"})
    assert_envelope(refused, 429)
    assert int(refused.headers["Retry-After"]) >= 1
