"""The operator console's queries on one million messages over 90 days.

    .venv/bin/python bench/console_stats.py --backend sqlite|postgresql [--messages 1000000] [--explain]

Fills a fresh database (a SQLite file in a temporary folder, or a throw-away schema in the
PostgreSQL at --pg-url) through the migrations, then bulk-inserts sessions and messages: half
customer questions, half answers, spread evenly over the last 90 UTC days, each answer with an
outcome (answered 60 %, smalltalk 13 %, clarified 10 %, no_match 10 %, handoff 5 %, blocked 2 %),
one in ten rated (70 % like) a few minutes later, answered ones citing one to three of 300
knowledge-base entries in `sources`. Questions come from a pool of 5,000 (skewed: a few are asked
very often). SQLite is filled with executemany batches, PostgreSQL with COPY.

Then times each console query through ConsoleService (the code behind the routes), median of 5,
for days=30 and days=90, and prints a table. --explain prints the query plans as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text

from c_app.config import Settings
from c_app.container import build_services
from c_app.db.models import ChatSession, Message

DAYS = 90
TURNS_PER_SESSION = 10
ENTRIES = 300
QUESTIONS = 5000
BATCH = 20_000
OUTCOMES = [
    ("answered", 60),
    ("smalltalk", 13),
    ("clarified", 10),
    ("no_match", 10),
    ("handoff", 5),
    ("blocked", 2),
]
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def question_pool(rng: random.Random) -> list[str]:
    stems = ["怎么退货", "运费多少", "发票怎么开", "会员积分", "多久发货", "能改地址吗", "退款到账", "优惠券"]
    return [f"{rng.choice(stems)}{i}" if i >= len(stems) else stems[i] for i in range(QUESTIONS)]


def generate(n_messages: int, seed: int = 7) -> tuple[list[dict[str, Any]], Iterator[list[dict[str, Any]]]]:
    """Sessions, and message batches (question, answer pairs, oldest first) made as they are read."""
    rng = random.Random(seed)
    pool = question_pool(rng)
    weights = [1 / (i + 1) for i in range(QUESTIONS)]  # Zipf-like
    outcome_names = [o for o, _ in OUTCOMES]
    outcome_weights = [w for _, w in OUTCOMES]
    turns = n_messages // 2
    n_sessions = max(1, turns // TURNS_PER_SESSION)
    now = datetime.now(UTC)
    span = timedelta(days=DAYS).total_seconds()
    start = now - timedelta(days=DAYS)
    asked = rng.choices(pool, weights=weights, k=turns)
    outcomes = rng.choices(outcome_names, weights=outcome_weights, k=turns)

    def user_of(s: int) -> str:
        return f"bench-u{s % (n_sessions // 3 + 1)}"

    def begin_of(s: int) -> datetime:
        return start + timedelta(seconds=span * s / n_sessions)

    sessions = [
        {
            "id": f"bench-s{s}",
            "user_id": user_of(s),
            "title": f"会话{s}",
            "description": "",
            "status": "active",
            "metadata": {},
            "message_count": 2 * TURNS_PER_SESSION,
            "created_at": begin_of(s),
            "last_activity_at": begin_of(s) + timedelta(seconds=30 * (TURNS_PER_SESSION - 1) + 2),
        }
        for s in range(n_sessions)
    ]
    return sessions, _batches(n_sessions, rng, asked, outcomes, user_of, begin_of)


def _batches(
    n_sessions: int,
    rng: random.Random,
    asked: list[str],
    outcomes: list[str],
    user_of: Callable[[int], str],
    begin_of: Callable[[int], datetime],
) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    next_id = 1
    for s in range(n_sessions):
        session_id = f"bench-s{s}"
        user_id = user_of(s)
        begin = begin_of(s)
        for t in range(TURNS_PER_SESSION):
            k = s * TURNS_PER_SESSION + t
            at = begin + timedelta(seconds=30 * t)
            outcome = outcomes[k]
            sources = None
            if outcome == "answered":
                cited = rng.sample(range(1, ENTRIES + 1), rng.randint(1, 3))
                sources = [
                    {
                        "id": e,
                        "type": "public",
                        "content": "答案",
                        "relevance_score": 0.9,
                        "created_at": None,
                        "title": f"条目{e}",
                        "question": f"问题{e}",
                    }
                    for e in cited
                ]
            rated = rng.random() < 0.1
            feedback = ("like" if rng.random() < 0.7 else "dislike") if rated else None
            common = {"session_id": session_id, "user_id": user_id, "status": "complete", "parts": None}
            batch.append(
                {
                    **common,
                    "id": next_id,
                    "role": "user",
                    "content": asked[k],
                    "outcome": None,
                    "entry_id": None,
                    "sources": None,
                    "feedback": None,
                    "feedback_at": None,
                    "created_at": at,
                }
            )
            batch.append(
                {
                    **common,
                    "id": next_id + 1,
                    "role": "assistant",
                    "content": "回答",
                    "outcome": outcome,
                    "entry_id": sources[0]["id"] if sources else None,
                    "sources": sources,
                    "feedback": feedback,
                    "feedback_at": at + timedelta(minutes=3) if rated else None,
                    "created_at": at + timedelta(seconds=2),
                }
            )
            next_id += 2
            if len(batch) >= BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


async def fill(services: Any, backend: str, n_messages: int) -> float:
    sessions, batches = generate(n_messages)
    started = time.perf_counter()
    engine = services.db.engine
    if backend == "postgresql":
        async with engine.begin() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            await raw.copy_records_to_table(
                "chat_sessions",
                columns=list(sessions[0]),
                records=[
                    tuple(json.dumps(v) if k == "metadata" else v for k, v in s.items()) for s in sessions
                ],
            )
            for batch in batches:
                columns = list(batch[0])
                records = [
                    tuple(json.dumps(v) if k == "sources" and v is not None else v for k, v in row.items())
                    for row in batch
                ]
                await raw.copy_records_to_table("messages", columns=columns, records=records)
            await conn.execute(
                text("SELECT setval(pg_get_serial_sequence('messages', 'id'), max(id)) FROM messages")
            )
            await conn.execute(text("ANALYZE messages"))
            await conn.execute(text("ANALYZE chat_sessions"))
    else:
        session_table = ChatSession.__table__
        rows = sessions
        async with engine.begin() as conn:
            for start in range(0, len(rows), BATCH):
                await conn.execute(insert(session_table), rows[start : start + BATCH])
        for batch in batches:
            async with engine.begin() as conn:
                await conn.execute(insert(Message.__table__), batch)
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
    return time.perf_counter() - started


async def median_seconds(call: Callable[[], Awaitable[Any]], runs: int = 5) -> float:
    await call()  # warm the caches once
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def explain(services: Any, backend: str) -> None:
    """The plans of the day-series queries (the aggregate they share) and the feedback query."""
    start = (datetime.now(UTC) - timedelta(days=30)).replace(tzinfo=None)
    prefix = "EXPLAIN QUERY PLAN" if backend == "sqlite" else "EXPLAIN"
    stamp = start.isoformat(sep=" ") if backend == "sqlite" else f"{start.isoformat()}+00:00"
    day = "date(created_at)" if backend == "sqlite" else "date(timezone('UTC', created_at))"
    fday = day.replace("created_at", "feedback_at")
    queries = {
        "outcomes": f"SELECT {day}, outcome, count(*) FROM messages WHERE role = 'assistant' "
        f"AND created_at >= '{stamp}' AND outcome IS NOT NULL GROUP BY {day}, outcome",
        "feedback": f"SELECT {fday}, feedback, count(*) FROM messages WHERE feedback_at >= '{stamp}' "
        f"AND feedback IS NOT NULL GROUP BY {fday}, feedback",
    }
    async with services.db.engine.connect() as conn:
        for name, sql in queries.items():
            plan = (await conn.execute(text(f"{prefix} {sql}"))).all()
            print(f"-- {name}")
            for row in plan:
                print("  ", " | ".join(str(v) for v in row))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        values: dict[str, Any] = {
            "upload_dir": str(Path(folder) / "uploads"),
            "load_sample_kb": False,
            "index_refresh_interval": 3600.0,
        }
        schema = None
        if args.backend == "sqlite":
            values["memory_db_path"] = str(Path(folder) / "console.db")
        else:
            import asyncpg

            schema = f"console_{uuid.uuid4().hex[:10]}"
            conn = await asyncpg.connect(args.pg_url)
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.close()
            values.update(database_url=args.pg_url, database_schema=schema)
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        services = build_services(settings)
        try:
            await services.start(sample_kb=False)
            seconds = await fill(services, args.backend, args.messages)
            print(f"{args.backend}: {args.messages:,} messages over {DAYS} days inserted in {seconds:.1f} s")
            if args.explain:
                await explain(services, args.backend)
            console = services.console
            cases: list[tuple[str, Callable[[int], Awaitable[Any]]]] = [
                ("stats/turns", lambda d: console.turns(days=d)),
                ("stats/outcomes", lambda d: console.outcomes(days=d)),
                ("stats/feedback", lambda d: console.feedback(days=d)),
                ("stats/top-questions", lambda d: console.top_questions(days=d, limit=10)),
                ("stats/top-entries", lambda d: console.top_entries(days=d, limit=10)),
                ("gaps (page 1)", lambda d: console.gaps(kind="all", days=d, page=1, page_size=20)),
                ("conversations (page 1)", lambda d: console.conversations(page=1, page_size=20)),
                ("conversations?q=退款", lambda d: console.conversations(page=1, page_size=20, text="退款")),
            ]
            print("\n| query | days=30 (ms) | days=90 (ms) |\n|---|---:|---:|")
            for name, call in cases:
                t30 = await median_seconds(lambda call=call: call(30))
                t90 = await median_seconds(lambda call=call: call(90))
                print(f"| `{name}` | {t30 * 1000:.0f} | {t90 * 1000:.0f} |", flush=True)
        finally:
            await services.aclose()
            if schema is not None:
                import asyncpg

                conn = await asyncpg.connect(args.pg_url)
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
