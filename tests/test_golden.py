"""Issue 11: the golden-question gate, from the admin API (live knowledge base, gated import) and from
`c-app eval` / `c-app import --golden` (a real process, exit statuses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from c_app.db.models import Memory

from .conftest import BACKEND
from .test_cli import cli  # noqa: F401  (the fixture: `c-app` as a real process on a SQLite file)
from .utils import assert_envelope, rows

KB = "/api/v1/admin/knowledge"
AUTH = {"Authorization": "Bearer t0k"}
SAMPLE_KB = Path(__file__).resolve().parents[1] / "c_app" / "data" / "sample_kb.jsonl"

GOLDEN = [
    {"question": "退款多久能到账", "external_id": "kb-refund-001"},
    {"question": "可以修改收货地址吗", "external_id": "kb-order-001"},
    {"question": "忘记密码怎么办", "external_id": "kb-account-002"},
    {"question": "明天天气怎么样", "external_id": None},  # right when declined
    {"question": "发票", "external_id": "kb-invoice-006"},  # unclear: choices, not an answer
]


@pytest.fixture
async def admin(start_app):
    app, client = await start_app(admin_token="t0k", index_refresh_interval=3600)  # the sample KB
    client.headers.update(AUTH)
    return app, client


async def test_eval_route_counts_right_clarified_and_lists_the_failures(admin):
    _, client = admin
    response = await client.post(f"{KB}/eval", json={"questions": GOLDEN, "min_right": 0.8})
    assert response.status_code == 200
    report = response.json()["data"]
    assert (report["total"], report["right"], report["clarified"], report["wrong"]) == (5, 4, 1, 0)
    assert report["right_rate"] == 0.8 and report["passed"] is True
    [failure] = report["failures"]
    assert failure["question"] == "发票" and failure["outcome"] == "clarified"
    assert "kb-invoice-006" in failure["got"]

    strict = (await client.post(f"{KB}/eval", json={"questions": GOLDEN, "min_right": 0.9})).json()["data"]
    assert strict["passed"] is False


async def test_eval_route_refuses_bad_input_in_the_envelope(admin):
    _, client = admin
    for body in ({"questions": []}, {"questions": [{"question": ""}]}, {"questions": GOLDEN, "min_right": 2}):
        assert_envelope(await client.post(f"{KB}/eval", json=body), 422)


def _jsonl(items: list[dict]) -> bytes:
    return "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items).encode()


async def test_a_gated_import_that_would_break_the_golden_questions_writes_nothing(admin):
    app, client = admin
    # Re-importing the refund entry as something else would lose "退款多久能到账".
    breaking = {"external_id": "kb-refund-001", "question": "会员卡怎么办理？", "answer": "请到门店办理。"}
    response = await client.post(
        f"{KB}/import",
        files={"file": ("kb.jsonl", _jsonl([breaking])), "golden": ("golden.jsonl", _jsonl(GOLDEN[:4]))},
        data={"min_right": "1.0"},
    )
    body = assert_envelope(response, 422)
    assert body["error"]["details"]["passed"] is False
    assert body["error"]["details"]["failures"][0]["expected"] == "kb-refund-001"
    [entry] = await rows(app, Memory, Memory.external_id == "kb-refund-001")
    assert entry.question == "退款多久能到账？"  # unchanged

    harmless = {
        "external_id": "kb-new-1",
        "question": "可以开收据吗？",
        "answer": "可以，在订单详情申请收据。",
    }
    response = await client.post(
        f"{KB}/import",
        files={"file": ("kb.jsonl", _jsonl([harmless])), "golden": ("golden.jsonl", _jsonl(GOLDEN[:4]))},
        data={"min_right": "1.0"},
    )
    assert response.status_code == 200
    assert response.json()["data"]["gate"]["right"] == 4
    assert await rows(app, Memory, Memory.external_id == "kb-new-1")


async def test_a_bad_golden_file_is_refused_before_anything_is_written(admin):
    app, client = admin
    response = await client.post(
        f"{KB}/import",
        files={
            "file": ("kb.jsonl", _jsonl([{"external_id": "x1", "question": "问", "answer": "答"}])),
            "golden": ("golden.jsonl", b'{"question": 3}\n'),
        },
    )
    assert_envelope(
        response, 400, "黄金问题集第 1 行格式错误：需要 question（文本）和 external_id（文本或 null）"
    )
    assert not await rows(app, Memory, Memory.external_id == "x1")


@pytest.mark.skipif(BACKEND != "sqlite", reason="the CLI tests run on a SQLite file")
def test_cli_eval_exit_status_follows_the_threshold(cli, tmp_path: Path):  # noqa: F811
    cli("import", str(SAMPLE_KB))
    golden = tmp_path / "golden.jsonl"
    golden.write_bytes(_jsonl(GOLDEN))
    passed = cli("eval", str(golden), "--min-right", "0.8")
    assert "共 5 题：答对 4，答错 0，反问 1，未命中 0；正确率 80.0%" in passed.stdout
    assert "[反问] 发票" in passed.stdout
    failed = cli("eval", str(golden), "--min-right", "0.9", check=False)
    assert failed.returncode == 1

    breaking = tmp_path / "breaking.jsonl"
    breaking.write_bytes(
        _jsonl([{"external_id": "kb-refund-001", "question": "会员卡怎么办理？", "answer": "门店"}])
    )
    refused = cli("import", str(breaking), "--golden", str(golden), "--min-right", "0.8", check=False)
    assert refused.returncode == 1 and "未导入任何条目" in refused.stdout
    assert cli("eval", str(golden), "--min-right", "0.8").returncode == 0  # still the old entry
