"""The `c-app` command, run as a real process against a SQLite file named by MEMORY_DB_PATH."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "sqlite", reason="the CLI tests run on a SQLite file")

C_APP = Path(sys.executable).with_name("c-app")


@pytest.fixture
def cli(tmp_path: Path):
    db_path = tmp_path / "kb" / "cli.db"
    env = {
        key: value
        for key, value in os.environ.items()
        if key.upper() not in {"DATABASE_URL", "DATABASE_SCHEMA", "ADMIN_TOKEN", "LOAD_SAMPLE_KB"}
    }
    env["MEMORY_DB_PATH"] = str(db_path)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # cwd: an empty folder, so no .env file is read.
        done = subprocess.run(
            [str(C_APP), *args],
            check=False,
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done

    run.db_path = db_path  # type: ignore[attr-defined]
    return run


def public_rows(db_path: Path) -> list[tuple]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(
            "SELECT external_id, question, content, similar_questions FROM memories WHERE scope = 'public' ORDER BY id"
        ).fetchall()


ENTRIES = [
    {
        "external_id": "k1",
        "question": "运费险怎么理赔？",
        "similar_questions": ["运费险如何赔付"],
        "answer": "签收后申请理赔。",
    },
    {"external_id": "k2", "question": "可以开电子发票吗？", "answer": "可以，下单时选择电子发票。"},
    {
        "external_id": "k3",
        "category": "会员",
        "question": "会员积分什么时候过期？",
        "answer": "积分有效期十二个月。",
    },
]


def write_jsonl(path: Path, entries: list[dict], *, bad_line_at: int | None = None) -> Path:
    lines = [json.dumps(entry, ensure_ascii=False) for entry in entries]
    if bad_line_at is not None:
        lines.insert(bad_line_at - 1, '{"question": "没有答案"}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_migrate_creates_the_schema(cli):
    done = cli("migrate")
    assert "数据库已升级到最新版本" in done.stdout
    with sqlite3.connect(cli.db_path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"memories", "memory_changes", "alembic_version"} <= tables
    assert public_rows(cli.db_path) == []  # the CLI never loads the sample knowledge base


def test_import_search_export(cli, tmp_path):
    source = write_jsonl(tmp_path / "kb.jsonl", ENTRIES, bad_line_at=2)
    done = cli("import", str(source), check=False)
    assert done.returncode == 2, done.stderr  # some rows failed, the rest imported
    assert "第 2 行：" in done.stderr and "answer" in done.stderr
    assert "新增 3 条，更新 0 条，失败 1 条" in done.stdout
    assert "每秒" in done.stdout and "条" in done.stdout
    assert "%|" not in done.stderr  # no progress bar: stdout is not a terminal
    assert [row[0] for row in public_rows(cli.db_path)] == ["k1", "k2", "k3"]

    again = cli("import", str(write_jsonl(tmp_path / "kb2.jsonl", ENTRIES)), "--progress")
    assert "新增 0 条，更新 3 条，失败 0 条" in again.stdout
    assert "3/3" in again.stderr  # the bar, when asked for
    assert len(public_rows(cli.db_path)) == 3

    found = cli("search", "运费险如何赔付", "--limit", "2")
    hits = [line for line in found.stdout.splitlines() if line.lstrip()[:2].rstrip(".").isdigit()]
    assert len(hits) == 2 and "运费险怎么理赔？" in hits[0] and hits[0].split()[1].startswith("*")
    assert "会直接作答" in found.stdout

    out = tmp_path / "out.jsonl"
    cli("export", "-o", str(out))
    exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(e["external_id"], e["question"], e["answer"]) for e in exported] == [
        (e["external_id"], e["question"], e["answer"]) for e in ENTRIES
    ]
    assert exported[0]["similar_questions"] == ["运费险如何赔付"]
    as_csv = cli("export", "--format", "csv").stdout
    assert as_csv.startswith("\ufeffexternal_id,title,category,question,similar_questions,answer,metadata")
    assert "会员积分什么时候过期？" in as_csv


def test_strict_import_writes_nothing(cli, tmp_path):
    source = write_jsonl(tmp_path / "kb.jsonl", ENTRIES, bad_line_at=3)
    done = cli("import", str(source), "--strict", check=False)
    assert done.returncode == 1
    assert "第 3 行：" in done.stderr and "未导入任何条目" in done.stdout
    assert public_rows(cli.db_path) == []


def test_csv_and_markdown_imports(cli, tmp_path):
    csv_file = tmp_path / "kb.csv"
    csv_file.write_text(
        "\ufeffexternal_id,question,similar_questions,answer\nc1,怎么退货？,退货流程|如何退货,七天无理由退货。\n",
        encoding="utf-8",
    )
    cli("import", str(csv_file))
    doc = tmp_path / "notes.txt"
    doc.write_text("# 配送说明\n\n普通快递三天内送达。偏远地区顺延两天。\n", encoding="utf-8")
    cli("import", str(doc), "--format", "markdown")
    rows = public_rows(cli.db_path)
    assert rows[0][:3] == ("c1", "怎么退货？", "七天无理由退货。") and json.loads(rows[0][3]) == [
        "退货流程",
        "如何退货",
    ]
    assert rows[1][0] == "notes.txt#1" and rows[1][2] == "普通快递三天内送达。偏远地区顺延两天。"


def test_errors_are_reported_plainly(cli, tmp_path):
    done = cli("import", str(tmp_path / "missing.jsonl"), check=False)
    assert done.returncode == 1 and "错误：" in done.stderr and "Traceback" not in done.stderr
    unknown = tmp_path / "kb.txt"
    unknown.write_text("{}", encoding="utf-8")
    done = cli("import", str(unknown), check=False)
    assert done.returncode == 1 and "format" in done.stderr and "Traceback" not in done.stderr
