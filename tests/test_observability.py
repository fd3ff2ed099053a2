"""Observability: /metrics (Prometheus text, checked by promtool), JSON logs from a real server,
and a turn's OpenTelemetry spans (the SDK's in-memory exporter)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from c_app.db.models import Message
from c_app.main import create_app
from c_app.observability import tracing

from .conftest import BACKEND
from .security_utils import bearer, jwt_settings, token
from .servers import free_port, serve
from .utils import assert_envelope, chat_body, rows

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-observe-test"
ANSWERED = "买的东西不想要了怎么退货？"  # a sample knowledge-base question: answered from it
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= set(ls))


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
            capture_output=True,
            check=False,
        )
        path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool (Debian's prometheus package) could not be installed")
    return path


def check_with_promtool(text: str) -> None:
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


async def test_metrics_move_with_real_turns_on_every_door_and_pass_promtool(make_settings: Any) -> None:
    settings = make_settings(ws_heartbeat_seconds=5)
    with serve(create_app(settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            before = samples((await client.get("/metrics")).text)
            answered = await client.post("/api/v1/chat/stream", json=chat_body(ANSWERED, session_id="obs-1"))
            assert answered.status_code == 200 and "退货" in answered.text
            smalltalk = await client.post("/api/v1/chat/stream", json=chat_body("谢谢", session_id="obs-1"))
            assert smalltalk.status_code == 200
            refused = await client.post("/api/v1/chat/stream", json=chat_body("", session_id="obs-1"))
            assert refused.status_code == 400
            history = await client.get("/api/v1/chat/session/obs-1/messages")
            assert history.status_code == 200
            assert (await client.get("/no/such/path/12345")).status_code == 404
            openai = await client.post(
                "/v1/chat/completions",
                json={
                    "model": "c_app",
                    "messages": [{"role": "user", "content": ANSWERED}],
                    "user": "user123",
                },
            )
            assert openai.status_code == 200, openai.text
            async with websockets.connect(base.replace("http://", "ws://") + "/api/v1/chat/ws") as ws:
                assert json.loads(await ws.recv()) == {"type": "ready"}
                await ws.send(json.dumps({"type": "message", **chat_body(ANSWERED, session_id="obs-ws")}))
                while json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] != "done":
                    pass
            scraped = await client.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    check_with_promtool(scraped.text)
    after = samples(scraped.text)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    stream_route = {"route": "/api/v1/chat/stream", "method": "POST"}
    assert moved("c_app_http_requests_total", status="200", **stream_route) == 2
    assert moved("c_app_http_requests_total", status="400", **stream_route) == 1
    assert moved("c_app_http_request_duration_seconds_count", **stream_route) == 3
    # Route templates, never raw paths: the session id and the unknown path are not labels.
    assert moved("c_app_http_requests_total", route="/api/v1/chat/session/{session_id}/messages") == 1
    assert moved("c_app_http_requests_total", route="unmatched", status="404") == 1
    assert not any("obs-1" in str(labels) or "12345" in str(labels) for _, labels in after)
    # Turns by door and outcome, as stored with the answers.
    stored = [m.outcome for m in await rows_of(settings)]
    assert stored.count("answered") == 3 and stored.count("smalltalk") == 1, stored
    assert moved("c_app_turns_total", door="stream", outcome="answered", status="complete") == 1
    assert moved("c_app_turns_total", door="stream", outcome="smalltalk") == 1
    assert moved("c_app_turns_total", door="openai", outcome="answered") == 1
    assert moved("c_app_turns_total", door="websocket", outcome="answered") == 1
    assert moved("c_app_turn_first_text_seconds_count", door="stream") == 2
    assert moved("c_app_turn_duration_seconds_count", door="websocket") == 1
    assert moved("c_app_retrieval_duration_seconds_count") >= 4
    # Gauges sampled at the scrape: the index has applied the whole change log; the pool is counted.
    assert value(after, "c_app_index_lag_changes") == 0
    assert value(after, "c_app_db_pool_size_connections") >= 1
    assert ("c_app_db_pool_checked_out_connections", ()) in after


async def rows_of(settings: Any) -> list[Any]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        return await rows(app, Message, Message.role == "assistant")


async def test_model_tokens_and_errors_are_counted(start_app: Any, standin: Any) -> None:
    app, client = await start_app(llm_api_key=KEY, llm_base_url=standin.base_url, llm_max_retries=0)
    before = samples((await client.get("/metrics")).text)
    standin.script += [
        {"kind": "stream", "text": "您好，模型回答。", "chunk": 2},
        {"kind": "error", "status": 500},
    ]
    first = await client.post("/api/v1/chat/stream", json=chat_body("你们几点下班", session_id="tok-1"))
    second = await client.post("/api/v1/chat/stream", json=chat_body(ANSWERED, session_id="tok-2"))
    assert first.status_code == second.status_code == 200
    after = samples((await client.get("/metrics")).text)
    answers = await rows(app, Message, Message.role == "assistant")
    by_session = {m.session_id: m for m in answers}
    usage = by_session["tok-1"].usage
    assert usage["prompt_tokens"] > 0 and by_session["tok-2"].status == "fallback"
    model = {"model": app.state.settings.llm_model}
    for kind in ("prompt", "completion"):
        moved = value(after, "c_app_model_tokens_total", kind=kind, **model)
        moved -= value(before, "c_app_model_tokens_total", kind=kind, **model)
        assert moved == usage[f"{kind}_tokens"]
    errors = value(after, "c_app_model_errors_total", kind="unavailable", **model)
    assert errors - value(before, "c_app_model_errors_total", kind="unavailable", **model) == 1
    fallback = value(after, "c_app_turns_total", status="fallback") - value(
        before, "c_app_turns_total", status="fallback"
    )
    assert fallback == 1


async def test_metrics_token_and_admin_token_guard_metrics(start_app: Any) -> None:
    _, client = await start_app(**jwt_settings(metrics_token="scrape-me", admin_token="adm1n"))
    assert_envelope(await client.get("/metrics"), 401)
    for wrong in (bearer("nope"), bearer(token("some-user")), {"X-API-Key": "scrape-me"}):
        assert_envelope(await client.get("/metrics", headers=wrong), 401)
    for right in ("scrape-me", "adm1n"):
        ok = await client.get("/metrics", headers=bearer(right))
        assert ok.status_code == 200 and "c_app_http_requests_total" in ok.text


async def test_without_metrics_token_metrics_are_the_operators(start_app: Any) -> None:
    _, client = await start_app(**jwt_settings(admin_token="adm1n"))
    assert_envelope(await client.get("/metrics"), 401)
    assert_envelope(await client.get("/metrics", headers=bearer(token("a-customer"))), 403)
    assert (await client.get("/metrics", headers=bearer("adm1n"))).status_code == 200


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    tracing.shutdown()


async def test_a_turn_is_traced_request_turn_retrieval_model_storage(
    start_app: Any, spans: InMemorySpanExporter
) -> None:
    source = one_item()
    # Unset: one shared no-op context and the stream itself, nothing started.
    assert tracing.span("off") is tracing.span("still off") and tracing.stream("off", source) is source
    _, client = await start_app()
    tracing.configure(client and _settings_of(client), exporter=spans)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    answered = await client.post(
        "/api/v1/chat/stream", json=chat_body(ANSWERED, session_id="trace-1"), headers={"traceparent": parent}
    )
    assert answered.status_code == 200
    finished = {span.name: span for span in spans.get_finished_spans()}
    request = finished["POST /api/v1/chat/stream"]
    turn, retrieval, model, storage = (
        finished[n] for n in ("chat.turn", "chat.retrieval", "chat.model", "chat.storage")
    )
    assert (
        format(request.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    )  # the caller's trace
    assert request.parent is not None and format(request.parent.span_id, "016x") == "b7ad6b7169203331"
    assert turn.parent.span_id == request.context.span_id
    for child in (retrieval, model, storage):
        assert child.parent.span_id == turn.context.span_id
        assert child.context.trace_id == request.context.trace_id
    assert retrieval.end_time <= model.start_time and model.end_time <= storage.start_time
    assert request.attributes["http.route"] == "/api/v1/chat/stream"
    assert request.attributes["http.response.status_code"] == 200
    assert turn.attributes["c_app.outcome"] == "answered" and turn.attributes["c_app.door"] == "stream"
    assert request.attributes["c_app.request_id"] == answered.headers["x-request-id"]


async def one_item() -> Any:
    yield 1


def test_without_an_endpoint_nothing_of_the_sdk_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys; from c_app.config import Settings; from c_app.main import create_app; "
        f"create_app(Settings(_env_file=None, memory_db_path={str(tmp_path / 'x.db')!r}, "
        f"upload_dir={str(tmp_path / 'up')!r})); "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def _settings_of(client: httpx.AsyncClient) -> Any:
    transport = client._transport
    return transport.app.state.settings  # type: ignore[attr-defined]


def _wait_until_up(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text(encoding="utf-8", errors="replace")
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.2)


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[tuple[str, str, Path, Path]]:
    """Two server processes on one database and one PROMETHEUS_MULTIPROC_DIR (as WORKERS=2 would
    be): A is run_server.py with LOG_FORMAT=json, B plain uvicorn, started once A has emptied the
    folder (its first metric file is there)."""
    if BACKEND != "sqlite":
        pytest.skip("the real-server test runs once, on the embedded default")
    metrics_dir = tmp_path / "prom"
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "MEMORY_DB_PATH": str(tmp_path / "data" / "customer_service.db"),
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    env.pop("DATABASE_URL", None)
    port_a, port_b = free_port(), free_port()
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    procs: list[subprocess.Popen[bytes]] = []
    with log_a.open("wb") as out_a, log_b.open("wb") as out_b:
        try:
            a = subprocess.Popen(
                [sys.executable, str(ROOT / "run_server.py")],
                cwd=ROOT,
                env={**env, "PORT": str(port_a)},
                stdout=out_a,
                stderr=out_a,
            )
            procs.append(a)
            deadline = time.monotonic() + 60
            while not list(metrics_dir.glob("*.db")):
                assert a.poll() is None, log_a.read_text(encoding="utf-8", errors="replace")
                assert time.monotonic() < deadline, "no metric file written"
                time.sleep(0.05)
            b = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "c_app.main:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port_b),
                ],
                cwd=ROOT,
                env=env,
                stdout=out_b,
                stderr=out_b,
            )
            procs.append(b)
            base_a, base_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
            _wait_until_up(base_a, a, log_a)
            _wait_until_up(base_b, b, log_b)
            yield base_a, base_b, log_a, metrics_dir
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=20)


def test_two_processes_json_logs_and_one_exposition_for_both(
    two_processes: tuple[str, str, Path, Path],
) -> None:
    base_a, base_b, log, metrics_dir = two_processes
    phone = "13812345678"
    with httpx.Client(base_url=base_a, timeout=30) as client:
        streamed = client.post("/api/v1/chat/stream", json=chat_body(ANSWERED, session_id=phone))
        listed = client.get(f"/api/v1/chat/sessions/{phone}", params={"token": "sekret-value"})
    assert streamed.status_code == listed.status_code == 200
    # Multiprocess mode: B, which served no turn, reports A's (the files in PROMETHEUS_MULTIPROC_DIR).
    scraped = httpx.get(base_b + "/metrics", timeout=30)
    assert scraped.status_code == 200 and list(metrics_dir.glob("*.db"))
    check_with_promtool(scraped.text)
    found = samples(scraped.text)
    assert value(found, "c_app_turns_total", door="stream", outcome="answered") == 1
    assert value(found, "c_app_http_requests_total", route="/api/v1/chat/stream", status="200") == 1
    pids = {dict(labels).get("pid") for name, labels in found if name == "c_app_db_pool_size_connections"}
    assert len(pids) == 2, pids  # each process's pool, sampled in its own background loop

    # LOG_FORMAT=json: every line of A's output is one JSON object, uvicorn's access log included.
    deadline = time.monotonic() + 10
    while listed.headers["x-request-id"] not in (text := log.read_text(encoding="utf-8")):
        assert time.monotonic() < deadline, text  # the access line is written just after the answer
        time.sleep(0.05)
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert records
    for record in records:
        assert {"time", "level", "logger", "message", "request_id"} <= set(record), record
    request_id = listed.headers["x-request-id"]
    access = [r for r in records if r["logger"] == "uvicorn.access" and r["request_id"] == request_id]
    assert len(access) == 1 and "/api/v1/chat/sessions/" in access[0]["message"]
    assert "sekret-value" not in text and "[REDACTED]" in access[0]["message"]
    assert phone not in text and "[手机号1]" in access[0]["message"]
    assert any(r["logger"] == "c_app.main" and r["request_id"] == "-" for r in records)  # start-up line


async def test_index_lag_counts_another_replicas_writes_until_applied(start_app: Any) -> None:
    slow, slow_client = await start_app(index_refresh_interval=3600, load_sample_kb=False)
    other, _ = await start_app(load_sample_kb=False)
    assert value(samples((await slow_client.get("/metrics")).text), "c_app_index_lag_changes") == 0
    for fact in ("我住在上海", "我喜欢红色"):
        await other.state.services.memory.add_private("lag-user", fact)
    assert value(samples((await slow_client.get("/metrics")).text), "c_app_index_lag_changes") == 2
    await slow.state.services.sync.refresh(force=True)
    assert value(samples((await slow_client.get("/metrics")).text), "c_app_index_lag_changes") == 0


async def test_a_registered_gauge_function_is_sampled_at_each_scrape(start_app: Any) -> None:
    """How the hand-off queue (another branch) reports its length: a function registered at start-up."""
    from c_app.observability.metrics import HANDOFF_QUEUE, INDEX_LAG, GaugeSampler

    app, client = await start_app(load_sample_kb=False)
    waiting = [3]

    async def queue_length() -> int:
        return waiting[0]

    gauges: GaugeSampler = app.state.services.gauges
    gauges.register(HANDOFF_QUEUE, queue_length)
    assert value(samples((await client.get("/metrics")).text), "c_app_handoff_queue_length") == 3
    waiting[0] = 1
    assert value(samples((await client.get("/metrics")).text), "c_app_handoff_queue_length") == 1

    def broken() -> int:
        raise RuntimeError("database gone")

    gauges.register(INDEX_LAG, broken)  # a failing function: NaN, never its last value
    scraped = (await client.get("/metrics")).text
    assert "c_app_index_lag_changes NaN" in scraped


def test_json_lines_keep_the_redacted_traceback() -> None:
    import logging

    from c_app.observability.logs import JsonFormatter
    from c_app.privacy.logfilter import MaskPersonalData, RedactSecrets

    try:
        raise ValueError("GET /x?token=sekret-value for 13812345678")
    except ValueError:
        record = logging.LogRecord(
            "c_app.t", logging.ERROR, __file__, 1, "failed %s", ("?sig=abc",), sys.exc_info()
        )
    for log_filter in (RedactSecrets(), MaskPersonalData()):
        log_filter.filter(record)
    line = JsonFormatter().format(record)
    parsed = json.loads(line)
    assert parsed["level"] == "ERROR" and parsed["logger"] == "c_app.t" and parsed["request_id"] == "-"
    assert parsed["message"] == "failed ?sig=[REDACTED]"
    assert "ValueError" in parsed["exc_info"] and "[REDACTED]" in parsed["exc_info"]
    assert "sekret-value" not in line and "13812345678" not in line and "[手机号1]" in line
    assert record.exc_info is not None  # the record itself is left for other handlers
