"""Issue 12 in one run: what a c_app turn costs next to the least a server can do for it.

    python bench/proxy_cost.py                                # both backends, 8 s a phase, RSS 300 x 60 s
    python bench/proxy_cost.py --root /work/wt/perf-base .    # before and after, side by side in one run
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

    server: str  # relay, fixed, model (c_app), offline (c_app)
    root: str  # the c_app checkout's name; "-" for the bare servers
    backend: str  # sqlite, postgresql; "-" for the bare servers
    workers: int
    clients: int
    run: load.Drive
    rss_mib: float | None = None

    def row(self) -> dict[str, Any]:
        run = self.run
        return {
            "server": self.server,
            "root": self.root,
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
    duration: float
    clients: int
    results: load.Results = field(default_factory=load.Results)  # the bare servers' turns
    phases: list[Phase] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, phase: Phase) -> None:
        self.phases.append(phase)
        print(json.dumps(phase.row(), ensure_ascii=False), flush=True)

    def find(self, server: str, root: str, backend: str, clients: int, workers: int = 1) -> Phase | None:
        key = (server, root, backend, clients, workers)
        return next(
            (p for p in self.phases if (p.server, p.root, p.backend, p.clients, p.workers) == key), None
        )


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
    async with bare_server(kind, model_url) as (base, pid):
        await load.drive(base, bench.clients, WARM_UP_SECONDS, bench.results, tag="w")
        for clients in (1, bench.clients):
            run = await load.drive(base, clients, bench.duration, bench.results, tag=f"{clients}", pid=pid)
            bench.add(Phase(kind, "-", "-", 1, clients, run))


async def measure_c_app(
    bench: Bench,
    root: Path,
    backend: str,
    *,
    model_url: str | None,
    workers: int = 1,
    client_counts: tuple[int, ...] = (1,),
    seconds: float | None = None,
    rss: bool = False,
) -> None:
    """`root`'s c_app server on a fresh database: a warm-up, then each client count in turn; the
    database check over every turn acknowledged on it."""
    name = "model" if model_url is not None else "offline"
    env = load.model_env(model_url) if model_url is not None else {}
    results = load.Results()
    async with load.c_app_server(backend, root=root, workers=workers, env=env) as server:
        pid = server.process.pid
        await load.drive(server.base, bench.clients, WARM_UP_SECONDS, results, tag="w")
        for clients in client_counts:
            run = await load.drive(
                server.base, clients, seconds or bench.duration, results, tag=f"{clients}", pid=pid
            )
            rss_mib = round(load.rss_now(pid) / (1024 * 1024), 1) if rss else None
            bench.add(Phase(name, root.name, backend, workers, clients, run, rss_mib))
        problems = await load.verify(server, results)
    where = f"{name} {root.name} {backend} WORKERS={workers}"
    if results.failures or problems:
        print(json.dumps({"server": where, "failures": results.failures[:5], "db": problems[:5]}))
    bench.problems += [f"{where}: {p}" for p in results.failures + problems]


# -- the table ----------------------------------------------------------------------------------


def _ratio(top: Phase | None, bottom: Phase | None) -> float | None:
    if top is None or bottom is None or not bottom.run.turns_per_s:
        return None
    return top.run.turns_per_s / bottom.run.turns_per_s


def _ttfb(phase: Phase | None) -> float | None:
    return _ms(phase.run.first_bytes) if phase is not None else None


def _tps(phase: Phase | None) -> str:
    return f"{phase.run.turns_per_s:.1f}" if phase is not None else "-"


def _cell(value: float | None, unit: str, ok: bool | None, detail: str = "") -> str:
    if value is None:
        return "-"
    verdict = "" if ok is None else (" **met**" if ok else " not met")
    return f"{value:.2f}{unit}{verdict}" + (f" ({detail})" if detail else "")


def table(bench: Bench, roots: list[str], backends: list[str]) -> str:
    """The issue's targets, one column per checkout measured."""
    n = bench.clients
    relay1, relay_n = bench.find("relay", "-", "-", 1), bench.find("relay", "-", "-", n)
    fixed1, fixed_n = bench.find("fixed", "-", "-", 1), bench.find("fixed", "-", "-", n)
    lines = [
        (
            f"bare relay: first byte p50 {_ttfb(relay1)} ms at 1 client, {_tps(relay_n)} turns/s at {n}; "
            f"bare fixed endpoint: first byte p50 {_ttfb(fixed1)} ms, {_tps(fixed_n)} turns/s at {n}"
        ),
        "",
        "| measure | target | " + " | ".join(roots) + " |",
        "|---|---|" + "---|" * len(roots),
    ]

    def row(measure: str, target: str, cell: Any) -> None:
        lines.append(f"| {measure} | {target} | " + " | ".join(cell(root) for root in roots) + " |")

    for b in backends:

        def added(root: str, b: str = b) -> str:
            model = bench.find("model", root, b, 1)
            c_app, relay = _ttfb(model), _ttfb(relay1)
            value = c_app - relay if c_app is not None and relay is not None else None
            return _cell(value, " ms", value is not None and value <= 5, f"{c_app} - {relay}")

        def model_ratio(root: str, b: str = b) -> str:
            model = bench.find("model", root, b, n)
            value = _ratio(model, relay_n)
            return _cell(value, "×", value is not None and value >= 0.6, f"{_tps(model)} turns/s")

        def offline_ratio(root: str, b: str = b) -> str:
            offline = bench.find("offline", root, b, n)
            value = _ratio(offline, fixed_n)
            return _cell(value, "×", value is not None and value >= 0.7, f"{_tps(offline)} turns/s")

        def offline_first(root: str, b: str = b) -> str:
            value = _ttfb(bench.find("offline", root, b, 1))
            return _cell(value, " ms", value is not None and value <= 5)

        def workers(root: str, b: str = b) -> str:
            one, two = bench.find("offline", root, b, n), bench.find("offline", root, b, n, workers=2)
            value = _ratio(two, one)
            return _cell(value, "×", value is not None and value >= 1.3, f"{_tps(two)} / {_tps(one)}")

        def cpu(server: str, b: str = b) -> Any:
            def cell(root: str) -> str:
                phase = bench.find(server, root, b, n)
                return _cell(phase.run.cpu_ms_per_turn if phase else None, " ms", None)

            return cell

        row(f"{b}: model turn, 1 client: added first byte p50 over the relay", "≤ 5 ms (≤ 3)", added)
        row(f"{b}: model turn, {n} clients: turns/s over the relay's", "≥ 0.6×", model_ratio)
        row(f"{b}: offline turn, {n} clients: turns/s over the fixed endpoint's", "≥ 0.7×", offline_ratio)
        row(f"{b}: offline turn, 1 client: first byte p50", "≤ 5 ms", offline_first)
        row(f"{b}: offline turn, {n} clients: WORKERS=2 over WORKERS=1", "≥ 1.3×", workers)
        row(f"{b}: model turn, {n} clients: server CPU per turn", "-", cpu("model"))
        row(f"{b}: offline turn, {n} clients: server CPU per turn", "-", cpu("offline"))
    if "sqlite" in backends and "postgresql" in backends:
        for server in ("offline", "model"):

            def pg_ratio(root: str, server: str = server) -> str:
                pg, lite = bench.find(server, root, "postgresql", n), bench.find(server, root, "sqlite", n)
                value = _ratio(pg, lite)
                return _cell(value, "×", value is not None and value >= 0.75, f"{_tps(pg)} / {_tps(lite)}")

            row(f"{server} turn, {n} clients: PostgreSQL turns/s over SQLite's", "≥ 0.75×", pg_ratio)
    for phase in bench.phases:
        if phase.rss_mib is not None and phase.root == roots[0]:
            clients, workers, seconds = phase.clients, phase.workers, phase.run.seconds

            def rss(root: str, clients: int = clients, workers: int = workers) -> str:
                found = next(
                    (
                        p
                        for p in bench.phases
                        if p.rss_mib is not None
                        and (p.root, p.clients, p.workers) == (root, clients, workers)
                    ),
                    None,
                )
                return _cell(found.rss_mib, " MiB", None, f"{_tps(found)} turns/s") if found else "-"

            row(f"sqlite: RSS after {seconds:.0f} s at {clients} clients, WORKERS={workers}", "reported", rss)
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> Bench:
    bench = Bench(duration=args.duration, clients=args.clients)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    roots = [root.resolve() for root in args.root]
    if "ratios" in args.parts:
        async with load.standin_model(args.chunks) as model_url:
            await measure_bare(bench, "relay", model_url)
            await measure_bare(bench, "fixed", None)
            for backend in backends:
                for root in roots:  # before and after side by side, under the same load
                    await measure_c_app(
                        bench, root, backend, model_url=model_url, client_counts=(1, args.clients)
                    )
                    await measure_c_app(bench, root, backend, model_url=None, client_counts=(1, args.clients))
                    await measure_c_app(
                        bench, root, backend, model_url=None, workers=2, client_counts=(args.clients,)
                    )
    if "rss" in args.parts:
        for root in roots:
            for workers in (1, 2):
                await measure_c_app(
                    bench,
                    root,
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
    parser.add_argument(
        "--root",
        type=Path,
        nargs="+",
        default=[load.ROOT],
        help="the checkouts whose c_app servers to run (several: side by side in the table)",
    )
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
    roots = [str(root.resolve()) for root in args.root]
    print(
        f"\nroots: {', '.join(roots)}; {args.duration:.0f} s per phase; stand-in model: {args.chunks} chunks\n"
    )
    print(table(bench, [Path(root).name for root in roots], backends))
    failures = bench.problems + [f"bare server: {f}" for f in bench.results.failures]
    if failures:
        print("\nproblems:", *failures[:10], sep="\n  ")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
