"""Measure the app's own retrieval on a faq-eval file, through the database.

    .venv/bin/python bench/faq_eval.py ../shared/data/faq-eval/bq_valid_faq.json [--threshold-table]

The FAQ entries are written as public memories with KnowledgeService.upsert (batched, the
import path), into a fresh SQLite file (or DATABASE_URL; with PostgreSQL a throw-away schema is
created and dropped). Each query then goes through MemoryService.search(user, query, limit=5),
the code behind POST /api/v1/chat/memory/retrieve, and recall@1/3/5 is computed on its public
hits. The last line printed is one JSON object {"r1", "r3", "r5", "p50_ms", "p99_ms"}.

--threshold-table also prints, for direct-answer thresholds t, the coverage (share of queries
whose top public score >= t) and two precisions of the top hit: strict (it is the gold entry)
and lenient (also right when its normalised question equals the gold entry's or the query's:
the sets hold unlabelled duplicate entries). Then a margin rule (answer only when top1 >= t and
top1 - top2 >= m) is searched for the widest coverage at precision >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from c_app.config import Settings
from c_app.container import build_services
from c_app.db.engine import Database
from c_app.db.memories import PUBLIC
from c_app.retrieval import normalize
from c_app.services.index_sync import iter_scope

BATCH = 500
USER = "faq-eval-user"
THRESHOLDS = [round(0.5 + 0.05 * i, 2) for i in range(10)]  # 0.50 .. 0.95
MARGINS = [round(0.02 * i, 2) for i in range(16)]  # 0.00 .. 0.30
TARGET = 0.9
SHOWN_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
SHOWN_MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2)


@dataclass(slots=True)
class Outcome:
    """What retrieval returned for one query: public hits as FAQ ids with scores."""

    query: str
    gold: int
    ranked: list[tuple[int, float]]

    @property
    def top(self) -> float:
        return self.ranked[0][1] if self.ranked else 0.0

    @property
    def gap(self) -> float:
        if not self.ranked:
            return 0.0
        return self.top - (self.ranked[1][1] if len(self.ranked) > 1 else 0.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def fresh_schema(settings: Settings) -> str | None:
    """On PostgreSQL, a new schema so the measurement never mixes with other data."""
    if settings.is_sqlite:
        return None
    schema = f"faq_eval_{uuid.uuid4().hex[:10]}"
    db = Database(settings)
    async with db.engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    await db.dispose()
    return schema


async def drop_schema(settings: Settings, schema: str) -> None:
    db = Database(settings.model_copy(update={"database_schema": None}))
    async with db.engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await db.dispose()


async def run(path: Path, workdir: Path) -> tuple[list[Outcome], dict[int, str], list[float], float]:
    data = json.loads(path.read_text(encoding="utf-8"))
    base = Settings(memory_db_path=str(workdir / "faq_eval.db"), upload_dir=str(workdir / "uploads"))
    schema = await fresh_schema(base)
    settings = base.model_copy(update={"database_schema": schema}) if schema else base
    services = build_services(settings)
    db, memory = services.db, services.memory
    try:
        await services.start(sample_kb=False)
        # The entry's question is what is matched; an empty answer keeps the index identical to
        # the retrieval library's direct measurement (no answer text in the eval sets).
        entries = [
            {"external_id": f"faq-{e['id']}", "question": e["question"], "answer": ""} for e in data["faq"]
        ]
        started = time.perf_counter()
        for start in range(0, len(entries), BATCH):
            await services.knowledge.upsert(entries[start : start + BATCH])
        load_s = time.perf_counter() - started
        faq_id: dict[int, int] = {}  # memory id -> the eval set's FAQ id
        async for rows in iter_scope(db, scope=PUBLIC, owner_id=""):
            faq_id.update((row.id, int(str(row.external_id).removeprefix("faq-"))) for row in rows)
        await memory.search(USER, "预热", limit=5)  # first search packs the postings built by the load
        outcomes: list[Outcome] = []
        latencies: list[float] = []
        for q in data["queries"]:
            t = time.perf_counter()
            hits = await memory.search(USER, q["query"], limit=5)
            latencies.append((time.perf_counter() - t) * 1000)
            ranked = [(faq_id[h.id], h.score) for h in hits if h.scope == PUBLIC]
            outcomes.append(Outcome(q["query"], q["gold"], ranked))
    finally:
        await services.aclose()
        if schema:
            await drop_schema(base, schema)
    questions = {e["id"]: e["question"] for e in data["faq"]}
    return outcomes, questions, latencies, load_s


def recall(outcomes: list[Outcome], k: int) -> float:
    return sum(o.gold in [d for d, _ in o.ranked[:k]] for o in outcomes) / len(outcomes)


def judged(outcomes: list[Outcome], questions: dict[int, str]) -> list[tuple[Outcome, bool, bool]]:
    """Each outcome with (strictly right, leniently right) for its top hit."""
    norm = {doc: normalize(q) for doc, q in questions.items()}
    out = []
    for o in outcomes:
        if not o.ranked:
            out.append((o, False, False))
            continue
        top = o.ranked[0][0]
        strict = top == o.gold
        lenient = strict or norm[top] == norm[o.gold] or norm[top] == normalize(o.query)
        out.append((o, strict, lenient))
    return out


def rule_stats(rows: list[tuple[Outcome, bool, bool]], t: float, m: float) -> tuple[float, float, float]:
    """(coverage, strict precision, lenient precision) of: answer when top >= t and gap >= m."""
    chosen = [(s, ln) for o, s, ln in rows if o.ranked and o.top >= t and o.gap >= m]
    if not chosen:
        return 0.0, float("nan"), float("nan")
    n = len(chosen)
    return n / len(rows), sum(s for s, _ in chosen) / n, sum(ln for _, ln in chosen) / n


def threshold_table(outcomes: list[Outcome], questions: dict[int, str]) -> None:
    rows = judged(outcomes, questions)
    print("  threshold  coverage  precision  precision(lenient)")
    for t in THRESHOLDS:
        cov, p, pl = rule_stats(rows, t, 0.0)
        print(f"  {t:9.2f}  {cov:8.3f}  {p:9.3f}  {pl:18.3f}")
    print("  margin rule (answer when top1 >= t and top1 - top2 >= m): coverage / precision / lenient")
    print("      t \\ m " + "".join(f"{m:>20.2f}" for m in SHOWN_MARGINS))
    for t in SHOWN_THRESHOLDS:
        cells = "".join("{:>8.3f}/{:.3f}/{:.3f}".format(*rule_stats(rows, t, m)) for m in SHOWN_MARGINS)
        print(f"  {t:9.2f} {cells}")
    grid = [(t, m) for t in [round(0.05 * i, 2) for i in range(20)] for m in MARGINS]
    for label, which in (("strict", 1), ("lenient", 2)):
        best: tuple[float, float, float, tuple[float, float, float]] | None = None
        for t, m in grid:
            stats = rule_stats(rows, t, m)
            if stats[which] >= TARGET and (best is None or stats[0] > best[2]):
                best = (t, m, stats[0], stats)
        if best is None:
            print(f"  margin rule, {label}: no (t, m) reaches precision {TARGET}")
            continue
        t, m, _, (cov, p, pl) = best
        plain = next(
            (
                (tt, rule_stats(rows, tt, 0.0))
                for tt in [x / 100 for x in range(30, 101)]
                if rule_stats(rows, tt, 0.0)[which] >= TARGET
            ),
            None,
        )
        print(
            f"  margin rule, {label} precision >= {TARGET}: t={t:.2f} m={m:.2f} coverage={cov:.3f} "
            f"precision={p:.3f} lenient={pl:.3f}"
        )
        if plain is not None:
            tt, (c0, p0, pl0) = plain
            print(f"    (threshold alone: t={tt:.2f} coverage={c0:.3f} precision={p0:.3f} lenient={pl0:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--threshold-table", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="faq_eval_") as tmp:
        outcomes, questions, latencies, load_s = asyncio.run(run(args.path, Path(tmp)))
    summary: dict[str, Any] = {
        "r1": round(recall(outcomes, 1), 4),
        "r3": round(recall(outcomes, 3), 4),
        "r5": round(recall(outcomes, 5), 4),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
    }
    print(
        f"{args.path.name}: {len(questions)} entries loaded in {load_s:.1f}s "
        f"({len(questions) / load_s:,.0f}/s), {len(outcomes)} queries through MemoryService.search"
    )
    print(
        f"  R@1={summary['r1']:.3f} R@3={summary['r3']:.3f} R@5={summary['r5']:.3f} "
        f"query p50={summary['p50_ms']:.2f} ms p99={summary['p99_ms']:.2f} ms"
    )
    if args.threshold_table:
        threshold_table(outcomes, questions)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
