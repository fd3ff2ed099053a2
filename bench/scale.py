"""Retrieval at scale, through the database: 100,000 knowledge entries and a user with 1,000 memories.

    .venv/bin/python bench/scale.py [--entries 100000] [--queries 300]

Fills a fresh SQLite file (or DATABASE_URL's database; on PostgreSQL a throw-away schema) through
the bulk import path (KnowledgeService.import_rows: validation, then batches of
IMPORT_BATCH_SIZE entries per transaction), adds 1,000 private and 200 chat memories (--chat) for
one user, then times MemoryService.search over the three scopes. Entry texts come from
c_app/data/sample_kb.jsonl and, when present, the faq-eval sets in ../shared/data/faq-eval/
(cycled with a numeric suffix so entries stay distinct). Reports: import rate, resident memory
after loading, query p50/p99 (targets < 10 ms and < 50 ms), and the time a fresh process takes
to build its index from the database (measured in a child process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text

from c_app.config import Settings
from c_app.container import build_services
from c_app.db.engine import Database
from c_app.retrieval import LexicalIndex
from c_app.services.knowledge_formats import RawRow

EVAL_DIR = ROOT.parent / "shared" / "data" / "faq-eval"
SAMPLE_KB = ROOT / "c_app" / "data" / "sample_kb.jsonl"
USER = "scale-user"


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def source_texts() -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(sample entries, extra question texts, query texts)."""
    sample = [json.loads(line) for line in SAMPLE_KB.read_text(encoding="utf-8").splitlines() if line.strip()]
    questions: list[str] = []
    queries = [q for e in sample for q in e.get("similar_questions", [])]
    for name in ("bq_valid_faq.json", "lcqmc_valid_faq.json"):
        path = EVAL_DIR / name
        if not path.exists():
            print(f"note: {path} not found, generating from the sample knowledge base only")
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        questions += [e["question"] for e in data["faq"]]
        queries += [q["query"] for q in data["queries"]]
    return sample, questions, queries


def make_entries(n: int, sample: list[dict[str, Any]], questions: list[str]) -> list[dict[str, Any]]:
    answers = [e["answer"] for e in sample]
    pool = [e["question"] for e in sample] + questions
    entries = []
    for i in range(n):
        base = pool[i % len(pool)]
        question = base if i < len(pool) else f"{base} {i // len(pool)}"
        entries.append(
            {
                "external_id": f"scale-{i}",
                "question": question,
                "answer": answers[i % len(answers)],
                "category": "压测",
            }
        )
    return entries


async def with_schema(settings: Settings) -> Settings:
    if settings.is_sqlite:
        return settings
    schema = f"scale_{uuid.uuid4().hex[:10]}"
    db = Database(settings)
    async with db.engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    await db.dispose()
    return settings.model_copy(update={"database_schema": schema})


async def fill_and_query(settings: Settings, n_entries: int, n_queries: int, n_chat: int) -> dict[str, Any]:
    sample, questions, queries = source_texts()
    entries = make_entries(n_entries, sample, questions)
    services = build_services(settings)
    memory, knowledge = services.memory, services.knowledge
    try:
        await services.start(sample_kb=False)
        rss0 = rss_mb()
        started = time.perf_counter()
        report = await knowledge.import_rows(RawRow(line=i + 1, data=e) for i, e in enumerate(entries))
        import_s = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(1000):
            await memory.add_private(
                USER, f"备注{i}：{queries[(i * 7) % len(queries)]}", {"title": f"备注{i}"}
            )
        for i in range(n_chat):
            question = queries[(i * 13 + 5) % len(queries)]
            await memory.add_exchange(
                USER, question, f"关于“{question}”的答复。", "scale-session", grounded=True
            )
        memories_s = time.perf_counter() - started
        # The snapshot a replica would write after the import (timed apart from the queries).
        started = time.perf_counter()
        await services.sync.refresh(force=True)
        task = services.sync._snapshot_task  # the refresh may have started it already
        saved = await task if task is not None else await services.sync.save_snapshot(force=True)
        snapshot_s = time.perf_counter() - started
        probe = queries[len(queries) // 2 :][:n_queries] or queries[:n_queries]
        # The first searches pack the postings the bulk load appended and build the user's indexes.
        for q in probe[:50]:
            await memory.search(USER, q, limit=5)
        latencies, cpu = [], []
        for q in probe:
            t, c = time.perf_counter(), time.process_time()
            await memory.search(USER, q, limit=5)
            latencies.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)  # all threads: apart from other load
        return {
            "entries": report.created,
            "import_s": round(import_s, 1),
            "import_rate": round(report.created / import_s),
            "user_memories_s": round(memories_s, 1),
            "snapshot_saved": saved,
            "snapshot_s": round(snapshot_s, 1),
            "rss_mb": round(rss_mb()),
            "rss_growth_mb": round(rss_mb() - rss0),
            "queries": len(latencies),
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "cpu_p50_ms": round(statistics.median(cpu), 2),
            "cpu_p99_ms": round(percentile(cpu, 0.99), 2),
        }
    finally:
        await services.aclose()


async def startup(settings: Settings) -> dict[str, Any]:
    """What a fresh process pays before it can serve: migrations check plus the public index build."""
    rss0 = rss_mb()
    started = time.perf_counter()
    warm = LexicalIndex()  # jieba's dictionary and the background statistics load once per process
    warm.upsert(0, ["预热"])
    warm.search("预热", 1)
    library_s = time.perf_counter() - started
    services = build_services(settings)
    started, cpu = time.perf_counter(), time.process_time()
    await services.start(sample_kb=False)
    seconds = time.perf_counter() - started
    startup_cpu = time.process_time() - cpu
    t, c = time.perf_counter(), time.process_time()
    await services.memory.search(USER, "怎么开通", limit=5)
    first_query_ms = (time.perf_counter() - t) * 1000
    first_query_cpu_ms = (time.process_time() - c) * 1000
    await services.aclose()
    return {
        "started_from": services.sync.started_from,
        "library_s": round(library_s, 1),
        "startup_s": round(seconds, 1),
        "startup_rate": round(len(services.sync.public_index) / seconds),
        "first_query_ms": round(first_query_ms),
        "first_query_cpu_ms": round(first_query_cpu_ms),
        "startup_cpu_s": round(startup_cpu, 1),
        "startup_rss_growth_mb": round(rss_mb() - rss0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--chat", type=int, default=200, help="the user's chat memories")
    parser.add_argument("--startup-only", metavar="SETTINGS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.startup_only:
        # Child process: the settings of the filled database, measured from a cold interpreter.
        settings = Settings.model_validate_json(args.startup_only)
        print(json.dumps(asyncio.run(startup(settings))))
        return
    with tempfile.TemporaryDirectory(prefix="c_app_scale_") as tmp:
        base = Settings(
            memory_db_path=str(Path(tmp) / "scale.db"),
            upload_dir=str(Path(tmp) / "uploads"),
            chat_memory_limit=max(args.chat, 1),
            load_sample_kb=False,
        )
        settings = asyncio.run(with_schema(base))
        figures = asyncio.run(fill_and_query(settings, args.entries, args.queries, args.chat))
        # Two fresh processes in turn: the first finds what the filling process left (the index
        # snapshot it wrote, if any), the second what the first left.
        for run in ("", "_again"):
            child = subprocess.run(
                [sys.executable, __file__, "--startup-only", settings.model_dump_json()],
                check=True,
                capture_output=True,
                text=True,
            )
            started = json.loads(child.stdout.strip().splitlines()[-1])
            figures.update({f"{key}{run}": value for key, value in started.items()})
    print(
        f"{figures['entries']:,} entries imported in {figures['import_s']} s ({figures['import_rate']:,}/s); "
        f"1,000 private + {args.chat:,} chat memories in {figures['user_memories_s']} s"
    )
    print(f"RSS after loading: {figures['rss_mb']} MB ({figures['rss_growth_mb']} MB for the data)")
    print(
        f"search over 3 scopes, {figures['queries']} queries: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms "
        f"(targets 10 / 50 ms); CPU per search p50 {figures['cpu_p50_ms']} ms, p99 {figures['cpu_p99_ms']} ms"
    )
    print(
        f"fresh process: {figures['library_s']} s loading jieba and background statistics, then "
        f"{figures['startup_s']} s loading the index ({figures['started_from']} {figures['startup_rate']:,} entries/s); "
        f"its first query (the user's private and chat memories) {figures['first_query_ms']} ms; "
        f"a second fresh process: {figures['startup_s_again']} s ({figures['started_from_again']}), "
        f"first query {figures['first_query_ms_again']} ms; snapshot written in {figures['snapshot_s']} s"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
