"""Fleet throughput: N replicas behind Debian's nginx (deploy/nginx.conf) on PostgreSQL and Redis,
C streaming clients for D seconds through nginx (bench/load.py's clients and row checks).

    python bench/fleet.py                          # 1 then 3 replicas, 30 clients x 20 s
    python bench/fleet.py --replicas 3 --clients 60 --duration 30

Reports turns/s overall and per replica (from X-Replica), p50/p99 turn latency, failed turns,
each replica's resident memory after the run; then checks every acknowledged turn is stored once.
Knowledge-base responder (no model), rate limits counted in Redis but set out of reach.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import PG_URL, Results, client_loop, verify_postgres
from tests.fleet import Replica, nginx_binary, nginx_in_front, replica_env, warm


async def run(replicas: int, clients: int, duration: float) -> dict[str, Any]:
    binary = nginx_binary()
    if binary is None:
        raise SystemExit("nginx is needed (apt-get install nginx)")
    workdir = Path(tempfile.mkdtemp(prefix="c_app-fleet-"))
    schema = f"fleet_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(PG_URL)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    env = replica_env(
        {"database_url": PG_URL, "database_schema": schema},
        workdir,
        REDIS_URL="redis://127.0.0.1:6379/12",
        RATE_LIMIT_KEY_PREFIX=schema,
        RATE_LIMIT_STREAM=os.environ.get("BENCH_RATE_LIMIT_STREAM", "100000/minute"),
        CACHE_DIR=str(workdir / "cache"),
    )
    nodes = [Replica(f"r{i + 1}", env, workdir) for i in range(replicas)]
    results = Results()
    served: Counter[str] = Counter()
    try:
        nodes[0].start()
        async with httpx.AsyncClient(timeout=120) as probe:
            await nodes[0].wait_ready(probe)
            for node in nodes[1:]:
                node.start()
            await asyncio.gather(*(node.wait_ready(probe) for node in nodes[1:]))
            await warm(probe, nodes)  # the term statistics, built once, outside the timed window
        with nginx_in_front(binary, [n.port for n in nodes], workdir) as url:

            async def count_replica(response: httpx.Response) -> None:
                served[response.headers.get("x-replica", "?")] += 1

            limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
            async with httpx.AsyncClient(
                base_url=url, timeout=120, limits=limits, event_hooks={"response": [count_replica]}
            ) as http:
                started = time.monotonic()
                deadline = started + duration
                await asyncio.gather(*(client_loop(http, i, deadline, results) for i in range(clients)))
                elapsed = time.monotonic() - started
        rss = {n.name: psutil.Process(n.process.pid).memory_info().rss // 2**20 for n in nodes if n.process}
        problems = await verify_postgres(schema, results)
    finally:
        for node in nodes:
            node.stop()
        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    latencies = sorted(results.latencies)
    return {
        "replicas": replicas,
        "clients": clients,
        "turns": len(latencies),
        "turns_per_s": round(len(latencies) / elapsed, 1),
        "per_replica": dict(sorted(served.items())),
        "p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "p99_s": round(latencies[int(len(latencies) * 0.99) - 1], 2) if latencies else None,
        "failed": len(results.failures),
        "rss_mib": rss,
        "db_problems": len(problems),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, nargs="*", default=[1, 3])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    bad = False
    for count in args.replicas:
        report = asyncio.run(run(count, args.clients, args.duration))
        print(report, flush=True)
        bad = bad or bool(report["failed"] or report["db_problems"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
