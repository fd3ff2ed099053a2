"""OpenTelemetry traces of a request and its turn, when OTEL_EXPORTER_OTLP_ENDPOINT is set.

A request's span (the HTTP middleware) has the turn's span as a child, and that has retrieval,
model and storage spans:

    POST /api/v1/chat/stream
    └── chat.turn
        ├── chat.retrieval   (each memory search; the model's own searches too)
        ├── chat.model       (the engine's whole stream)
        └── chat.storage     (the answer stored)

Unset, nothing of OpenTelemetry is imported and every helper here is a constant no-op. The SDK
and the OTLP exporter are the optional extra `c_app[otel]` (they pull in protobuf); the API
package comes with FastAPI. Spans are exported over OTLP/HTTP to `<endpoint>/v1/traces` in
batches; the SDK's own OTEL_* variables (headers, timeouts) still apply.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from ..config import Settings

T = TypeVar("T")

_tracer: Any = None  # an opentelemetry Tracer once configured; None: tracing off
_provider: Any = None
_NOOP: AbstractContextManager[None] = contextlib.nullcontext()


def configure(settings: Settings, *, exporter: Any = None) -> bool:
    """Trace to OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, or to `exporter` (tests: the SDK's
    InMemorySpanExporter). True when tracing is on. Raises when asked for but not installed."""
    global _tracer, _provider
    endpoint = settings.otel_exporter_otlp_endpoint
    if exporter is None and not endpoint:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:  # pragma: no cover - the test extra installs the SDK
        raise RuntimeError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed: "
            "pip install 'c_app[otel]'"
        ) from exc
    shutdown()
    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        assert endpoint is not None
        exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("c_app")
    return True


def shutdown() -> None:
    """Export what is left and stop tracing."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def enabled() -> bool:
    return _tracer is not None


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A span around a block (a child of the current one); a shared no-op when tracing is off."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes or None)


def current() -> Any:
    """The current span when tracing (to annotate later, wherever the code is then); else None."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    return trace.get_current_span()


def server_span(
    name: str, headers: Mapping[str, str], attributes: dict[str, Any]
) -> AbstractContextManager[Any]:
    """A request's span, continuing the caller's trace (W3C `traceparent`) when one is given."""
    if _tracer is None:
        return _NOOP
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(headers)
    return _tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)


def stream(name: str, source: AsyncIterator[T]) -> AsyncIterator[T]:
    """`source` with a span around its whole iteration (a child of the span current now), current
    while each step runs; `source` itself when tracing is off."""
    if _tracer is None:
        return source
    return _traced(_tracer.start_span(name), source)


def traced_stream(name: str) -> Callable[[Callable[..., AsyncIterator[T]]], Callable[..., AsyncIterator[T]]]:
    """Decorate an async generator function: each call's iteration runs in a span `name`."""

    def decorate(function: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[T]:
            return stream(name, function(*args, **kwargs))

        return wrapper

    return decorate


async def _traced(active: Any, source: AsyncIterator[T]) -> AsyncIterator[T]:
    # The span is made current around each step only, never across a yield: a step may run in a
    # task of its own (chat_service.until_stopped), and a context set there cannot be reset elsewhere.
    from opentelemetry import context, trace
    from opentelemetry.trace import Status, StatusCode

    ctx = trace.set_span_in_context(active)
    iterator = aiter(source)
    try:
        while True:
            token = context.attach(ctx)
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                return
            finally:
                context.detach(token)
            yield item
    except Exception as exc:
        active.record_exception(exc)
        active.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            token = context.attach(ctx)
            try:
                await close()
            finally:
                context.detach(token)
        active.end()
