"""GET /metrics (Prometheus text format), and the wiring of metrics and traces into an app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response

from ..config import Settings
from ..container import Services
from ..observability import tracing
from ..observability.metrics import CONTENT_TYPE, check_multiprocess, exposition
from .middleware.metrics import RequestMetrics

router = APIRouter(tags=["系统"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus 文本格式的指标"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus 指标。设置 METRICS_TOKEN 时需 `Authorization: Bearer <METRICS_TOKEN>`；
    否则与全局统计相同：AUTH_MODE=none 时开放，开启认证时需 ADMIN_TOKEN。"""
    request.app.state.authenticator.require_metrics(request.headers)
    services: Services = request.app.state.services
    await services.gauges.sample()
    return Response(exposition(services.settings.prometheus_multiproc_dir), media_type=CONTENT_TYPE)


def install_observability(app: FastAPI, settings: Settings) -> None:
    """/metrics, the request metrics middleware, and tracing when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    Call before `install_security`, so request ids are there when a request's span starts."""
    check_multiprocess(settings.prometheus_multiproc_dir)
    app.add_middleware(RequestMetrics)
    app.include_router(router)
    if not settings.otel_exporter_otlp_endpoint:
        return
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        tracing.configure(settings)
        try:
            async with inner(application) as state:
                yield state
        finally:
            tracing.shutdown()  # the spans still batched are sent

    app.router.lifespan_context = lifespan
