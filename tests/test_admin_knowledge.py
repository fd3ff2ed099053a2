"""Knowledge-base management: /api/v1/admin/knowledge (auth, CRUD, listing, import, export, hit test)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from c_app.db.models import Memory, MemoryChange

from .utils import assert_envelope, count, rows

KB = "/api/v1/admin/knowledge"
RETRIEVE = "/api/v1/chat/memory/retrieve"
AUTH = {"Authorization": "Bearer t0k"}

ENTRY = {
    "external_id": "faq-invoice-title",
    "title": "修改发票抬头",
    "category": "发票",
    "question": "开好的发票抬头写错了能改吗？",
    "similar_questions": ["发票抬头填错了怎么办", "怎么重开发票"],
    "answer": "发票开具后30天内可在“我的订单-发票详情”中申请换开，重新填写抬头即可。",
}


@pytest.fixture
async def admin(start_app):
    """An app with ADMIN_TOKEN=t0k and an empty knowledge base; its client sends the token.

    The change log is not polled during a test, so search sees a write only if the write itself
    updated this process's index.
    """
    app, client = await start_app(admin_token="t0k", load_sample_kb=False, index_refresh_interval=3600)
    client.headers.update(AUTH)
    return app, client


async def public_rows(app):
    return await rows(app, Memory, Memory.scope == "public")


async def retrieved_ids(client, query: str) -> list[int]:
    response = await client.post(RETRIEVE, json={"user_id": "u1", "query": query, "limit": 5})
    assert response.status_code == 200
    return [m["id"] for m in response.json()["data"]["memories"] if m["type"] == "public"]


async def score_of(client, query: str, entry_id: int) -> float:
    """The relevance score the customer route gives the entry for the query (0 when not returned)."""
    response = await client.post(RETRIEVE, json={"user_id": "u1", "query": query, "limit": 5})
    found = [m for m in response.json()["data"]["memories"] if m["type"] == "public" and m["id"] == entry_id]
    return found[0]["relevance_score"] if found else 0.0


def upload(content: str | bytes, name: str, **form):
    data = content.encode("utf-8") if isinstance(content, str) else content
    return {"files": {"file": (name, data)}, "data": {k: str(v).lower() for k, v in form.items()}}


# -- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0k"}, {"Authorization": "Basic t0k"}],
    ids=["missing", "wrong", "no-scheme", "basic"],
)
async def test_refused_without_the_right_token(start_app, headers):
    app, client = await start_app(admin_token="t0k", load_sample_kb=False)
    for method, path, body in (
        ("GET", KB, None),
        ("POST", KB, ENTRY),
        ("POST", f"{KB}/hit-test", {"query": "x"}),
    ):
        response = await client.request(method, path, json=body, headers=headers)
        body_json = assert_envelope(response, 401, error_type="HTTPException")
        assert not body_json["error"]["message"].isascii()
    assert await count(app, Memory) == 0


async def test_refused_when_no_token_is_configured(start_app):
    app, client = await start_app(load_sample_kb=False)
    response = await client.post(KB, json=ENTRY, headers={"Authorization": "Bearer "})
    assert_envelope(response, 401, "管理接口未启用：服务器未配置 ADMIN_TOKEN")
    response = await client.get(KB, headers={"Authorization": "Bearer None"})
    assert_envelope(response, 401)
    assert await count(app, Memory) == 0


# -- CRUD ----------------------------------------------------------------------------------------


async def test_crud_round_trip_keeps_search_current(admin):
    app, client = admin
    response = await client.post(KB, json=ENTRY)
    assert response.status_code == 200, response.text
    created = response.json()["data"]
    entry_id = created["id"]
    assert created["answer"] == ENTRY["answer"] and created["similar_questions"] == ENTRY["similar_questions"]
    [row] = await public_rows(app)
    assert (row.id, row.owner_id, row.external_id, row.question, row.content) == (
        entry_id,
        "",
        "faq-invoice-title",
        ENTRY["question"],
        ENTRY["answer"],
    )
    assert await count(app, MemoryChange, MemoryChange.memory_id == entry_id) == 1
    # Found at once through the customer route, by a paraphrase.
    assert (await retrieved_ids(client, "发票抬头填错了怎么办"))[:1] == [entry_id]
    assert await score_of(client, "发票抬头填错了怎么办", entry_id) >= 0.8

    fetched = (await client.get(f"{KB}/{entry_id}")).json()["data"]
    assert fetched["question"] == ENTRY["question"] and fetched["category"] == "发票"

    change = {"question": "会员积分什么时候过期？", "similar_questions": [], "title": "积分有效期"}
    response = await client.put(f"{KB}/{entry_id}", json=change)
    assert response.status_code == 200, response.text
    updated = response.json()["data"]
    assert updated["question"] == "会员积分什么时候过期？" and updated["title"] == "积分有效期"
    assert updated["answer"] == ENTRY["answer"] and updated["category"] == "发票"  # untouched fields stay
    assert await score_of(client, "会员积分什么时候过期", entry_id) >= 0.8
    assert await score_of(client, "发票抬头填错了怎么办", entry_id) < 0.8

    response = await client.delete(f"{KB}/{entry_id}")
    assert response.status_code == 200 and response.json()["data"] == {"id": entry_id}
    assert await public_rows(app) == []
    assert entry_id not in await retrieved_ids(client, "会员积分什么时候过期")
    for method in ("GET", "PUT", "DELETE"):
        response = await client.request(
            method, f"{KB}/{entry_id}", json={"answer": "x"} if method == "PUT" else None
        )
        assert_envelope(response, 404, "知识条目不存在")


@pytest.mark.parametrize(
    "change",
    [
        {"answer": None},
        {"answer": "   "},
        {"question": "", "title": ""},
        {"question": "问" * 501},
        {"answer": "答" * 20001},
        {"similar_questions": ["相似"] * 51},
        {"similar_questions": ["长" * 501]},
        {"category": "类" * 101},
        {"external_id": "x" * 201},
        {"question": 123},
    ],
    ids=[
        "no-answer",
        "blank-answer",
        "no-question",
        "long-question",
        "long-answer",
        "many-similar",
        "long-similar",
        "long-category",
        "long-external-id",
        "wrong-type",
    ],
)
async def test_invalid_entries_are_refused(admin, change):
    app, client = admin
    body = {**ENTRY, **change}
    body = {key: value for key, value in body.items() if value is not None}
    response = await client.post(KB, json=body)
    assert_envelope(response, 422)
    assert await count(app, Memory) == 0


async def test_duplicate_external_id_is_a_conflict(admin):
    app, client = admin
    first = (await client.post(KB, json=ENTRY)).json()["data"]["id"]
    assert_envelope(await client.post(KB, json={**ENTRY, "question": "另一个问题"}), 409, "外部ID已存在")
    other = (await client.post(KB, json={**ENTRY, "external_id": "faq-2"})).json()["data"]["id"]
    assert_envelope(await client.put(f"{KB}/{other}", json={"external_id": "faq-invoice-title"}), 409)
    assert await count(app, Memory) == 2
    # Emptying the question and the title together leaves no entry: refused, nothing changed.
    assert_envelope(await client.put(f"{KB}/{first}", json={"question": "", "title": ""}), 400)
    [row] = await rows(app, Memory, Memory.id == first)
    assert row.question == ENTRY["question"]


async def test_list_pages_and_filters(admin):
    _, client = admin
    for i in range(25):
        category = "会员" if i % 5 == 0 else "物流"
        title = f"VIP 权益 {i}" if i % 5 == 0 else f"快递 {i}"
        answer = f"答案{i}" + ("，满100减10%" if i == 7 else "")
        response = await client.post(KB, json={"title": title, "category": category, "answer": answer})
        assert response.status_code == 200
    page1 = (await client.get(KB, params={"page": 1, "page_size": 10})).json()["data"]
    page3 = (await client.get(KB, params={"page": 3, "page_size": 10})).json()["data"]
    assert page1["total"] == page3["total"] == 25
    assert len(page1["items"]) == 10 and len(page3["items"]) == 5
    ids = [item["id"] for item in page1["items"]]
    assert ids == sorted(ids) and not set(ids) & {item["id"] for item in page3["items"]}

    members = (await client.get(KB, params={"category": "会员"})).json()["data"]
    assert members["total"] == 5 and {item["category"] for item in members["items"]} == {"会员"}
    vip = (await client.get(KB, params={"q": "vip"})).json()["data"]  # case-insensitive
    assert vip["total"] == 5 and all("VIP" in item["title"] for item in vip["items"])
    assert (await client.get(KB, params={"q": "答案1"})).json()["data"]["total"] == 11  # 1, 10-19
    assert (await client.get(KB, params={"q": "10%"})).json()["data"]["total"] == 1  # % is no wildcard
    assert (await client.get(KB, params={"q": "_"})).json()["data"]["total"] == 0  # _ is no wildcard
    assert (await client.get(KB, params={"category": "会员", "q": "快递"})).json()["data"]["total"] == 0
    assert_envelope(await client.get(KB, params={"page_size": 101}), 422)
    assert_envelope(await client.get(KB, params={"page": 0}), 422)


# -- import --------------------------------------------------------------------------------------

JSONL_WITH_BAD_ROWS = "\n".join(
    [
        json.dumps(
            {"external_id": "j1", "question": "运费险怎么理赔？", "answer": "签收后在订单页申请理赔。"}
        ),
        '{"question": "坏的 JSON", ',
        "",
        json.dumps({"question": "没有答案的问题"}),
        json.dumps({"question": "问" * 501, "answer": "太长"}),
        json.dumps({"question": 123, "answer": "类型不对"}),
        "[1, 2]",
        json.dumps({"title": "营业时间", "answer": "客服每天 9:00-21:00 在线。"}, ensure_ascii=False),
    ]
)


async def test_jsonl_import_reports_bad_lines_and_imports_the_rest(admin):
    app, client = admin
    response = await client.post(f"{KB}/import", **upload(JSONL_WITH_BAD_ROWS, "kb.jsonl"))
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["created"], data["updated"], data["failed"]) == (2, 0, 5)
    assert [e["line"] for e in data["errors"]] == [2, 4, 5, 6, 7]
    assert "JSON" in data["errors"][0]["error"] and "answer" in data["errors"][1]["error"]
    assert "500" in data["errors"][2]["error"] and "类型" in data["errors"][3]["error"]
    stored = {row.question or row.title: row for row in await public_rows(app)}
    assert set(stored) == {"运费险怎么理赔？", "营业时间"}
    assert stored["运费险怎么理赔？"].external_id == "j1" and stored["营业时间"].external_id is None
    assert (await retrieved_ids(client, "运费险如何理赔"))[:1] == [stored["运费险怎么理赔？"].id]


@pytest.mark.parametrize("bom", [True, False], ids=["bom", "no-bom"])
async def test_csv_import_reports_bad_rows_by_line(admin, bom):
    app, client = admin
    text = (
        "external_id,title,category,question,similar_questions,answer\r\n"
        'c1,,支付,支持哪些付款方式？,微信能付吗|支付宝可以吗,"支持微信、支付宝。\n也支持银行卡。"\r\n'
        "c2,,支付,没有答案的问题,,\r\n"
        "c3,发票,发票,可以开专票吗？,专票| 增值税专用发票 ,可以开具增值税专用发票。\r\n"
        "c4,a,b,c,d,e,f\r\n"
    )
    response = await client.post(f"{KB}/import", **upload(("\ufeff" if bom else "") + text, "kb.csv"))
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["created"], data["failed"]) == (2, 2)
    assert [e["line"] for e in data["errors"]] == [4, 6]
    stored = {row.external_id: row for row in await public_rows(app)}
    assert set(stored) == {"c1", "c3"}
    assert stored["c1"].similar_questions == ["微信能付吗", "支付宝可以吗"]
    assert stored["c1"].content == "支持微信、支付宝。\n也支持银行卡。" and stored["c1"].category == "支付"
    assert stored["c3"].similar_questions == ["专票", "增值税专用发票"]


FAQ_MARKDOWN = """# 退换货

## 怎么申请退货？
在“我的订单”中点击申请售后。

### 注意事项
商品需保持完好。

## 退款多久到账？
原路退回，1-7个工作日到账。

## 如何修改收货地址

# 发票
## 可以开电子发票吗？
可以，下单时选择电子发票即可。
"""


async def test_markdown_faq_gives_one_entry_per_question(admin):
    app, client = admin
    response = await client.post(f"{KB}/import", **upload(FAQ_MARKDOWN, "faq.md"))
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["created"], data["failed"]) == (3, 1)
    assert data["errors"] == [{"line": 12, "error": "答案不能为空"}]  # the question with nothing under it
    stored = {row.question: row for row in await public_rows(app)}
    assert set(stored) == {"怎么申请退货？", "退款多久到账？", "可以开电子发票吗？"}
    returns = stored["怎么申请退货？"]
    assert (
        returns.category == "退换货"
        and "### 注意事项" in returns.content
        and "商品需保持完好" in returns.content
    )
    assert stored["可以开电子发票吗？"].category == "发票"
    assert (
        returns.meta["document"] == "faq.md" and returns.external_id == f"faq.md#{returns.meta['position']}"
    )
    assert (await retrieved_ids(client, "退款几天能到账"))[:1] == [stored["退款多久到账？"].id]


def policy_document(chapters: int) -> str:
    clause = "第{n}条：会员在每笔订单完成后获得相应积分，积分可在下次购物时按规则抵扣现金。"
    parts = ["# 会员章程", ""]
    for chapter in range(1, chapters + 1):
        parts += [f"## 第{chapter}章 规则说明", ""]
        parts.append("".join(clause.format(n=f"{chapter}-{i}") for i in range(20)))  # one ~800-char paragraph
        parts += ["", f"本章解释权归示例商城所有（第{chapter}章）。", ""]
    parts += ["## 积分过期", "", "积分自获得之日起有效期为十二个月，过期自动清零。"]
    return "\n".join(parts)


async def test_markdown_policy_document_is_chunked_with_positions(admin):
    app, client = admin
    response = await client.post(f"{KB}/import", **upload(policy_document(3), "policy.md"))
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["failed"] == 0 and data["created"] >= 7
    chunks = sorted(await public_rows(app), key=lambda row: row.meta["position"])
    assert [row.meta["position"] for row in chunks] == list(range(1, len(chunks) + 1))
    for row in chunks:
        assert row.meta["document"] == "policy.md" and row.external_id == f"policy.md#{row.meta['position']}"
        assert 0 < len(row.content) <= 500
        assert row.content.endswith(("。", "）")), row.content  # cut between sentences
        assert row.title == row.meta["heading"] and row.category == "会员章程" and row.question == ""
    assert chunks[0].meta["heading"] == "会员章程 > 第1章 规则说明"
    assert chunks[-1].meta["heading"] == "会员章程 > 积分过期"
    assert "".join(row.content for row in chunks).count("会员在每笔订单完成后") == 60  # nothing lost
    assert chunks[-1].id in await retrieved_ids(client, "积分有效期多久")

    again = (await client.post(f"{KB}/import", **upload(policy_document(3), "policy.md"))).json()["data"]
    assert (again["created"], again["updated"], again["deleted"]) == (0, len(chunks), 0)
    assert await count(app, Memory) == len(chunks)

    shorter = (await client.post(f"{KB}/import", **upload(policy_document(1), "policy.md"))).json()["data"]
    remaining = await public_rows(app)
    assert shorter["deleted"] == len(chunks) - len(remaining) > 0
    assert len(remaining) == shorter["updated"] + shorter["created"]


async def test_strict_import_writes_nothing_when_a_row_is_bad(admin):
    app, client = admin
    response = await client.post(f"{KB}/import", **upload(JSONL_WITH_BAD_ROWS, "kb.jsonl", strict=True))
    body = assert_envelope(response, 422, "导入数据有误，未导入任何条目")
    assert [e["line"] for e in body["error"]["details"]] == [2, 4, 5, 6, 7]
    assert await count(app, Memory) == 0 and await count(app, MemoryChange) == 0
    good = "\n".join(JSONL_WITH_BAD_ROWS.splitlines()[i] for i in (0, 7))
    response = await client.post(f"{KB}/import", **upload(good, "kb.jsonl", strict=True))
    assert response.status_code == 200 and response.json()["data"]["created"] == 2


async def test_reimport_updates_instead_of_duplicating(admin):
    app, client = admin

    def lines(answer: str) -> str:
        return "\n".join(
            json.dumps({"external_id": f"r{i}", "question": f"问题{i}？", "answer": f"{answer}{i}"})
            for i in range(3)
        )

    first = (await client.post(f"{KB}/import", **upload(lines("旧答案"), "kb.jsonl"))).json()["data"]
    second = (await client.post(f"{KB}/import", **upload(lines("新答案"), "kb.jsonl"))).json()["data"]
    assert (first["created"], first["updated"]) == (3, 0)
    assert (second["created"], second["updated"]) == (0, 3)
    stored = await public_rows(app)
    assert sorted(row.content for row in stored) == ["新答案0", "新答案1", "新答案2"]
    # The same external_id twice in one file is one entry, the later line winning.
    twice = lines("甲") + "\n" + json.dumps({"external_id": "r9", "question": "问题9？", "answer": "乙"}) * 1
    twice += "\n" + json.dumps({"external_id": "r9", "question": "问题9？", "answer": "丙"})
    (await client.post(f"{KB}/import", **upload(twice, "kb.jsonl"))).raise_for_status()
    assert [row.content for row in await rows(app, Memory, Memory.external_id == "r9")] == ["丙"]
    assert await count(app, Memory) == 4


async def test_import_input_errors(start_app):
    app, client = await start_app(admin_token="t0k", load_sample_kb=False, max_import_bytes=2048)
    client.headers.update(AUTH)
    big = "\n".join(json.dumps({"question": f"问题{i}", "answer": "答" * 50}) for i in range(40))
    assert_envelope(await client.post(f"{KB}/import", **upload(big, "kb.jsonl")), 413)
    assert_envelope(await client.post(f"{KB}/import", **upload("{}", "kb.txt")), 400)
    assert_envelope(await client.post(f"{KB}/import", **upload("{}", "kb.jsonl", format="xml")), 400)
    assert_envelope(
        await client.post(f"{KB}/import", **upload("问题".encode("gbk"), "kb.csv")),
        400,
        "文件不是 UTF-8 编码",
    )
    assert await count(app, Memory) == 0
    # An explicit format wins over the name.
    ok = json.dumps({"question": "q？", "answer": "a"})
    response = await client.post(f"{KB}/import", **upload(ok, "kb.txt", format="jsonl"))
    assert response.status_code == 200 and response.json()["data"]["created"] == 1


# -- export --------------------------------------------------------------------------------------

ROUND_TRIP = [
    {**ENTRY, "metadata": {"source": "运营", "tags": ["a", "b"]}},
    {
        "question": "竖线|在问题里怎么办？",
        "similar_questions": ["a|b", "c"],
        "answer": '含"引号",逗号\n和换行',
    },
    {
        "title": "[活动] 双十一",
        "category": "活动",
        "similar_questions": ["[活动] 满减"],
        "answer": "满300减40。",
    },
]


async def test_export_then_import_round_trips(admin):
    app, client = admin
    for entry in ROUND_TRIP:
        (await client.post(KB, json=entry)).raise_for_status()

    async def export(fmt: str) -> str:
        response = await client.get(f"{KB}/export", params={"format": fmt})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(
            "text/csv" if fmt == "csv" else "application/x-ndjson"
        )
        return response.text

    async def clear() -> None:
        for row in await public_rows(app):
            (await client.delete(f"{KB}/{row.id}")).raise_for_status()
        assert await count(app, Memory) == 0

    original = await export("jsonl")
    exported = [json.loads(line) for line in original.splitlines()]
    assert len(exported) == 3 and exported[0]["metadata"] == ROUND_TRIP[0]["metadata"]
    assert exported[1]["similar_questions"] == ["a|b", "c"]
    as_csv = await export("csv")
    assert as_csv.startswith("\ufeffexternal_id,")

    for fmt, content in (("jsonl", original), ("csv", as_csv)):
        await clear()
        response = await client.post(f"{KB}/import", **upload(content, f"export.{fmt}"))
        assert response.json()["data"] | {"seconds": 0, "entries_per_second": 0} == {
            "created": 3,
            "updated": 0,
            "failed": 0,
            "deleted": 0,
            "errors": [],
            "seconds": 0,
            "entries_per_second": 0,
        }
        assert [json.loads(line) for line in (await export("jsonl")).splitlines()] == exported, fmt
    assert_envelope(await client.get(f"{KB}/export", params={"format": "xml"}), 400)


async def test_export_of_many_entries_streams_them_all(admin):
    app, client = admin
    lines = "\n".join(
        json.dumps({"external_id": f"e{i}", "question": f"问题{i}", "answer": "答"}) for i in range(2500)
    )
    (await client.post(f"{KB}/import", **upload(lines, "kb.jsonl"))).raise_for_status()
    response = await client.get(f"{KB}/export")
    exported = [json.loads(line)["external_id"] for line in response.text.splitlines()]
    assert exported == [f"e{i}" for i in range(2500)]
    async with app.state.services.db.read() as db:  # written in batches, one change record per entry
        assert (await db.execute(select(func.count()).select_from(MemoryChange))).scalar_one() == 2500


# -- hit test ------------------------------------------------------------------------------------


async def test_hit_test_explains_the_ranking(admin):
    app, client = admin
    entry_id = (await client.post(KB, json=ENTRY)).json()["data"]["id"]
    (
        await client.post(KB, json={"question": "会员积分怎么用？", "answer": "下单时可抵扣。"})
    ).raise_for_status()
    response = await client.post(f"{KB}/hit-test", json={"query": "请问发票抬头填错了怎么办呀", "limit": 5})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["query"] == "请问发票抬头填错了怎么办呀"
    assert data["normalized"] and "请问" not in data["normalized"]
    threshold = app.state.services.knowledge.answer_threshold
    assert data["threshold"] == threshold
    top = data["hits"][0]
    assert top["id"] == entry_id and top["question"] == ENTRY["question"] and top["category"] == "发票"
    assert top["score"] >= threshold and data["answered"] is True and data["answer_id"] == entry_id
    assert [h["score"] for h in data["hits"]] == sorted((h["score"] for h in data["hits"]), reverse=True)

    data = (await client.post(f"{KB}/hit-test", json={"query": "量子纠缠的物理原理"})).json()["data"]
    assert data["answered"] is False and data["answer_id"] is None
    assert all(h["score"] < threshold and h["above_threshold"] is False for h in data["hits"])
    assert_envelope(await client.post(f"{KB}/hit-test", json={"query": ""}), 422)
