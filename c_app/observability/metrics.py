"""The service's Prometheus metrics, kept with the official client (`prometheus_client`).

Counters and histograms are updated where things happen (the HTTP middleware, the chat service,
the model wrapper); gauges that describe state (database pool, index lag, hand-off queue) are
sampled through a `GaugeSampler`: each part registers a function at start-up and /metrics calls
them all before it renders. A function may be async (a count read from the database).

Several worker processes (`WORKERS=N`): set PROMETHEUS_MULTIPROC_DIR (an empty folder, wiped at
start by run_server.py) in the environment of every process; prometheus_client then keeps each
process's values in files there and /metrics, on whichever process answers, reports the sum of
all of them (gauges: one series per process, `pid` label). Each process samples its gauges every
few seconds in that mode, since another process's scrape cannot call its functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from . import tracing

logger = logging.getLogger(__name__)

# No `_created` series beside every counter and histogram: they double the series and nothing here reads them.
disable_created_metrics()

# The classic text format every Prometheus server reads (what generate_latest writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: an answer's first text and a whole streamed answer are slower than most requests.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RETRIEVAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SAMPLE_TIMEOUT = 2.0  # seconds one gauge function may take at a scrape
SAMPLE_INTERVAL = 5.0  # seconds between samples of each process's gauges (multiprocess mode only)

HTTP_REQUESTS = Counter(
    "c_app_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "c_app_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response (a stream: its last byte).",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
TURNS = Counter(
    "c_app_turns",
    "Chat turns answered, by door (stream, websocket, openai), outcome and stored status.",
    ["door", "outcome", "status"],
)
TURN_FIRST_TEXT = Histogram(
    "c_app_turn_first_text_seconds",
    "Time from the start of a turn's answer (the question stored) to its first answer text.",
    ["door"],
    buckets=LATENCY_BUCKETS,
)
TURN_DURATION = Histogram(
    "c_app_turn_duration_seconds",
    "Time from the start of a turn's answer to its end (stored).",
    ["door"],
    buckets=LATENCY_BUCKETS,
)
MODEL_TOKENS = Counter(
    "c_app_model_tokens",
    "Tokens the model reported, by model and kind (prompt, completion).",
    ["model", "kind"],
)
MODEL_ERRORS = Counter(
    "c_app_model_errors",
    "Model calls that failed, by model and kind (unavailable: before any text; broken: mid-answer).",
    ["model", "kind"],
)
RETRIEVAL_DURATION = Histogram(
    "c_app_retrieval_duration_seconds",
    "Time of one memory search (knowledge base, private facts, chat memory) for a turn.",
    buckets=RETRIEVAL_BUCKETS,
)
INDEX_LAG = Gauge(
    "c_app_index_lag_changes",
    "Entries of the memory change log this process's search index has not applied yet.",
    multiprocess_mode="liveall",
)
HANDOFF_QUEUE = Gauge(
    "c_app_handoff_queue_length",
    "Conversations waiting for a human agent.",
    multiprocess_mode="mostrecent",
)
DB_POOL_CHECKED_OUT = Gauge(
    "c_app_db_pool_checked_out_connections",
    "Database connections in use (checked out of this process's pool).",
    multiprocess_mode="liveall",
)
DB_POOL_SIZE = Gauge(
    "c_app_db_pool_size_connections",
    "Connections this process's pool keeps (DB_POOL_SIZE; up to DB_MAX_OVERFLOW more are opened on demand).",
    multiprocess_mode="liveall",
)

Number = float | int | None
Sample = Callable[[], Number | Awaitable[Number]]


def exposition(multiprocess_dir: str | None) -> bytes:
    """The metrics in Prometheus' text format: this process's, or every process's in multiprocess mode."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def check_multiprocess(multiprocess_dir: str | None) -> None:
    """prometheus_client chooses its storage from the environment variable when it is imported: the
    setting must be that variable (not only a .env line), or each process would count alone."""
    if multiprocess_dir and os.environ.get("PROMETHEUS_MULTIPROC_DIR") != multiprocess_dir:
        raise ValueError("PROMETHEUS_MULTIPROC_DIR must be set in the environment of every process")


class GaugeSampler:
    """Functions that give gauges their values, called before each scrape (and, with several
    processes, every SAMPLE_INTERVAL seconds). Register at start-up: `register(HANDOFF_QUEUE, fn)`."""

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self._samples: list[tuple[Gauge, Sample]] = []
        self._task: asyncio.Task[None] | None = None

    def register(self, gauge: Gauge, sample: Sample) -> None:
        self._samples.append((gauge, sample))

    async def sample(self) -> None:
        """Give every registered gauge its current value; NaN when its function fails (no stale value)."""
        for gauge, function in list(self._samples):
            try:
                value = function()
                if inspect.isawaitable(value):
                    value = await asyncio.wait_for(value, SAMPLE_TIMEOUT)
            except Exception:
                logger.warning("could not sample the gauge %s", gauge._name, exc_info=True)
                value = math.nan
            if value is not None:
                gauge.set(value)

    def start(self) -> None:
        """Multiprocess mode: sample in the background, so another process's scrape sees fresh values."""
        if self.multiprocess_dir and self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.multiprocess_dir:
            # This process's live gauges leave the exposition with it.
            _multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    async def _loop(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(SAMPLE_INTERVAL)


def pool_gauges(sampler: GaugeSampler, pool: object) -> None:
    """The SQLAlchemy pool's use (QueuePool: PostgreSQL and file SQLite), when the pool counts it."""
    checked_out = getattr(pool, "checkedout", None)
    size = getattr(pool, "size", None)
    if callable(checked_out) and callable(size):
        sampler.register(DB_POOL_CHECKED_OUT, checked_out)
        sampler.register(DB_POOL_SIZE, size)


class TurnClock:
    """One turn's figures: first text, outcome, duration (`text()` at each piece, `finished()` once)."""

    __slots__ = ("door", "first", "span", "started")

    def __init__(self, door: str) -> None:
        self.door = door
        self.started = time.perf_counter()
        self.first: float | None = None
        self.span = tracing.current()  # the turn's span: its outcome is set on it at the end

    def text(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
            TURN_FIRST_TEXT.labels(self.door).observe(self.first - self.started)

    def finished(self, outcome: str | None, status: str) -> None:
        outcome = outcome or "none"
        TURNS.labels(self.door, outcome, status).inc()
        TURN_DURATION.labels(self.door).observe(time.perf_counter() - self.started)
        if self.span is not None:
            self.span.set_attributes(
                {"c_app.door": self.door, "c_app.outcome": outcome, "c_app.status": status}
            )


@contextlib.contextmanager
def retrieval() -> Iterator[None]:
    """Time one memory search (histogram) and trace it (span `chat.retrieval`)."""
    started = time.perf_counter()
    try:
        with tracing.span("chat.retrieval"):
            yield
    finally:
        RETRIEVAL_DURATION.observe(time.perf_counter() - started)
