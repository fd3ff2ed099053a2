"""Issue 12 in one run: what a c_app turn costs next to the least a server can do for it.

    python bench/proxy_cost.py                                # both backends, 8 s a phase, RSS 300 x 60 s
    python bench/proxy_cost.py --root /work/wt/perf-base      # the same against another checkout's server
    python bench/proxy_cost.py --rss-clients 100 --rss-seconds 10 --duration 4   # a quick run
    python bench/proxy_cost.py --parts ratios                 # everything but the RSS load

On one machine, against one stand-in model (tests/llm_standin.py streaming --chunks one-character
chunks as fast as it can), with rate limits off, every server on loopback under uvicorn:

(a) model turn, 1 client: first-byte p50 of c_app's POST /api/v1/chat/stream minus the bare relay's
    (bench/bare.py relay: parse the request, relay the model's stream, no database);
(b) model turn, 50 clients: c_app's turns/s over the bare relay's;
(c) offline responder (the sample knowledge base, no model), 50 clients: turns/s over the bare
    fixed ten-piece endpoint's (bench/bare.py fixed), and c_app's first-byte p50 at 1 client;
(d) (a)-(c) on SQLite and on PostgreSQL (a schema per server), and PostgreSQL's turns/s over SQLite's;
(e) the offline turn at 50 clients with WORKERS=2 over WORKERS=1;
(f) RSS summed over the server's processes (psutil) at the end of --rss-seconds at --rss-clients
    clients, WORKERS=1 and 2 (offline turn, SQLite).

Servers and the load generator come from bench/load.py (whose database check runs after every c_app
server: each acknowledged turn's messages stored exactly once and in order) and bench/bare.py. A
short warm-up drive precedes each server's measurements. Prints the phases as they finish, then a
markdown table of the issue's targets; exits 1 when a turn failed or the database check did not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load  # bench/load.py

BENCH = Path(__file__).resolve().parent
WARM_UP_SECONDS = 2.0


@dataclass
class Phase:
    """One measured drive: `clients` clients for the phase's duration against one server."""

    server: str  # relay, fixed, c_app model, c_app offline
    backend: str  # sqlite, postgresql, or "-" for the bare servers
    workers: int
    clients: int
    run: load.Drive
    rss_mib: float | None = None

    def row(self) -> dict[str, Any]:
        run = self.run
        return {
            "server": self.server,
            "backend": self.backend,
            "workers": self.workers,
            "clients": self.clients,
            "turns": run.turns,
            "turns_per_s": round(run.turns_per_s, 1),
            "first_byte_p50_ms": _ms(run.first_bytes),
            "p50_ms": _ms(run.latencies),
            "cpu_ms_per_turn": round(run.cpu_ms_per_turn, 1) if run.cpu_ms_per_turn else None,
            "rss_mib": self.rss_mib,
        }


@dataclass
class Bench:
    root: Path
    duration: float
    clients: int
    results: load.Results = field(default_factory=load.Results)  # the bare servers' turns
    phases: list[Phase] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, phase: Phase) -> Phase:
        self.phases.append(phase)
        print(json.dumps(phase.row(), ensure_ascii=False), flush=True)
        return phase

    def find(self, server: str, backend: str, clients: int, workers: int = 1) -> Phase | None:
        for phase in self.phases:
            if (phase.server, phase.backend, phase.clients, phase.workers) == (
                server,
                backend,
                clients,
                workers,
            ):
                return phase
        return None


def _ms(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1000, 1) if values else None


@asynccontextmanager
async def bare_server(kind: str, model_url: str | None = None) -> AsyncIterator[tuple[str, int]]:
    """bench/bare.py `kind` on a free port; yields its base URL and process id."""
    workdir = Path(tempfile.mkdtemp(prefix=f"c_app-bare-{kind}-"))
    port = load.free_port()
    command = [sys.executable, str(BENCH / "bare.py"), kind, "--port", str(port)]
    if model_url is not None:
        command += ["--model-url", model_url]
    process = load.start_server(command, {}, workdir)
    base = f"http://127.0.0.1:{port}"
    try:
        await load.wait_ready(base, process)
        yield base, process.pid
    finally:
        load.stop_process(process)


async def measure_bare(bench: Bench, kind: str, model_url: str | None) -> None:
    name = "relay" if kind == "relay" else "fixed"
    async with bare_server(kind, model_url) as (base, pid):
        await load.drive(base, bench.clients, WARM_UP_SECONDS, bench.results, tag="w")
        for clients in (1, bench.clients):
            run = await load.drive(base, clients, bench.duration, bench.results, tag=f"{clients}", pid=pid)
            bench.add(Phase(name, "-", 1, clients, run))


async def measure_c_app(
    bench: Bench,
    backend: str,
    *,
    model_url: str | None,
    workers: int = 1,
    client_counts: tuple[int, ...] = (1,),
    seconds: float | None = None,
    rss: bool = False,
) -> None:
    """c_app's server on a fresh database: a warm-up, then each client count in turn; the
    database check over every turn acknowledged on it."""
    name = "c_app model" if model_url is not None else "c_app offline"
    env = load.model_env(model_url) if model_url is not None else {}
    results = load.Results()
    async with load.c_app_server(backend, root=bench.root, workers=workers, env=env) as server:
        pid = server.process.pid
        await load.drive(server.base, bench.clients, WARM_UP_SECONDS, results, tag="w")
        for clients in client_counts:
            before = len(results.rss)
            run = await load.drive(
                server.base,
                clients,
                seconds or bench.duration,
                results,
                tag=f"{clients}",
                pid=pid,
                sample=rss,
            )
            rss_mib = None
            if rss and len(results.rss) > before:
                rss_mib = round(load.rss_now(pid) / (1024 * 1024), 1)
            bench.add(Phase(name, backend, workers, clients, run, rss_mib))
        problems = await load.verify(server, results)
    failures = results.failures
    if failures or problems:
        print(json.dumps({"server": name, "backend": backend, "failures": failures[:5], "db": problems[:5]}))
    bench.problems += [f"{name} {backend}: {p}" for p in failures + problems]


def _ratio(top: Phase | None, bottom: Phase | None) -> float | None:
    if top is None or bottom is None or not bottom.run.turns_per_s:
        return None
    return round(top.run.turns_per_s / bottom.run.turns_per_s, 2)


def _ttfb(phase: Phase | None) -> float | None:
    return _ms(phase.run.first_bytes) if phase is not None else None


def _minus(a: float | None, b: float | None) -> float | None:
    return round(a - b, 1) if a is not None and b is not None else None


def _met(value: float | None, ok: bool) -> str:
    return "-" if value is None else ("yes" if ok else "no")


def table(bench: Bench, backends: list[str]) -> str:
    n = bench.clients
    relay1, relay_n = bench.find("relay", "-", 1), bench.find("relay", "-", n)
    fixed_n = bench.find("fixed", "-", n)
    rows: list[tuple[str, str, str, str]] = []
    for backend in backends:
        model1 = bench.find("c_app model", backend, 1)
        model_n = bench.find("c_app model", backend, n)
        off1, off_n = bench.find("c_app offline", backend, 1), bench.find("c_app offline", backend, n)
        added = _minus(_ttfb(model1), _ttfb(relay1))
        rows.append(
            (
                f"{backend}: model turn, 1 client, added first byte p50 (c_app {_ttfb(model1)} ms - relay {_ttfb(relay1)} ms)",
                "≤ 5 ms (≤ 3)",
                f"{added} ms",
                _met(added, added is not None and added <= 5),
            )
        )
        ratio = _ratio(model_n, relay_n)
        rows.append(
            (
                (
                    f"{backend}: model turn, {n} clients, turns/s over the relay's "
                    f"({_tps(model_n)} / {_tps(relay_n)})"
                ),
                "≥ 0.6×",
                f"{ratio}×",
                _met(ratio, ratio is not None and ratio >= 0.6),
            )
        )
        ratio = _ratio(off_n, fixed_n)
        rows.append(
            (
                (
                    f"{backend}: offline turn, {n} clients, turns/s over the bare fixed endpoint's "
                    f"({_tps(off_n)} / {_tps(fixed_n)})"
                ),
                "≥ 0.7×",
                f"{ratio}×",
                _met(ratio, ratio is not None and ratio >= 0.7),
            )
        )
        first = _ttfb(off1)
        rows.append(
            (
                f"{backend}: offline turn, 1 client, first byte p50 (fixed endpoint {_ttfb(bench.find('fixed', '-', 1))} ms)",
                "≤ 5 ms",
                f"{first} ms",
                _met(first, first is not None and first <= 5),
            )
        )
        two = bench.find("c_app offline", backend, n, workers=2)
        ratio = _ratio(two, off_n)
        rows.append(
            (
                f"{backend}: offline turn, {n} clients, WORKERS=2 over WORKERS=1 ({_tps(two)} / {_tps(off_n)})",
                "≥ 1.3×",
                f"{ratio}×",
                _met(ratio, ratio is not None and ratio >= 1.3),
            )
        )
        for phase in (model_n, off_n):
            if phase is not None:
                rows.append(
                    (
                        f"{backend}: {phase.server}, {n} clients, server CPU per turn",
                        "-",
                        f"{_cpu(phase)} ms",
                        "",
                    )
                )
    if "sqlite" in backends and "postgresql" in backends:
        for server in ("c_app offline", "c_app model"):
            pg, lite = bench.find(server, "postgresql", n), bench.find(server, "sqlite", n)
            ratio = _ratio(pg, lite)
            rows.append(
                (
                    f"{server[6:]} turn, {n} clients, PostgreSQL turns/s over SQLite's ({_tps(pg)} / {_tps(lite)})",
                    "≥ 0.75× (within 25%)",
                    f"{ratio}×",
                    _met(ratio, ratio is not None and ratio >= 0.75),
                )
            )
    for phase in bench.phases:
        if phase.rss_mib is not None:
            rows.append(
                (
                    (
                        f"RSS after {phase.run.seconds:.0f} s at {phase.clients} clients, WORKERS={phase.workers} "
                        f"({phase.backend}, {_tps(phase)} turns/s)"
                    ),
                    "reported",
                    f"{phase.rss_mib} MiB",
                    "",
                )
            )
    lines = ["| measure | target | value | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def _tps(phase: Phase | None) -> str:
    return f"{phase.run.turns_per_s:.1f}" if phase is not None else "-"


def _cpu(phase: Phase) -> str:
    value = phase.run.cpu_ms_per_turn
    return f"{value:.1f}" if value is not None else "-"


async def run(args: argparse.Namespace) -> Bench:
    bench = Bench(root=args.root.resolve(), duration=args.duration, clients=args.clients)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    if "ratios" in args.parts:
        async with load.standin_model(args.chunks) as model_url:
            await measure_bare(bench, "relay", model_url)
            await measure_bare(bench, "fixed", None)
            for backend in backends:
                await measure_c_app(bench, backend, model_url=model_url, client_counts=(1, bench.clients))
                await measure_c_app(bench, backend, model_url=None, client_counts=(1, bench.clients))
                await measure_c_app(bench, backend, model_url=None, workers=2, client_counts=(bench.clients,))
    if "rss" in args.parts:
        for workers in (1, 2):
            await measure_c_app(
                bench,
                "sqlite",
                model_url=None,
                workers=workers,
                client_counts=(args.rss_clients,),
                seconds=args.rss_seconds,
                rss=True,
            )
    return bench


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--root", type=Path, default=load.ROOT, help="the checkout whose c_app server to run")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured phase")
    parser.add_argument("--clients", type=int, default=50, help="the concurrent clients of (b), (c), (e)")
    parser.add_argument("--chunks", type=int, default=50, help="chunks per answer of the stand-in model")
    parser.add_argument("--rss-clients", type=int, default=300)
    parser.add_argument("--rss-seconds", type=float, default=60.0)
    parser.add_argument(
        "--parts", nargs="+", choices=["ratios", "rss"], default=["ratios", "rss"], help="what to measure"
    )
    args = parser.parse_args()
    bench = asyncio.run(run(args))
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    print(f"\nroot: {bench.root}; {args.duration:.0f} s per phase; stand-in model: {args.chunks} chunks\n")
    print(table(bench, backends))
    failures = bench.problems + [f"bare server: {f}" for f in bench.results.failures]
    if failures:
        print("\nproblems:", *failures[:10], sep="\n  ")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
