"""The FastAPI application: `uvicorn c_app.main:app`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__
from .api import api_router
from .api.lifecycle import Drain, ReplicaHeader, replica_name
from .api.lifecycle import router as lifecycle_router
from .api.metrics import install_observability
from .api.middleware.body_limit import BodyLimit
from .api.middleware.cors import setup_cors
from .api.middleware.error_handler import setup_error_handlers
from .api.middleware.header_limit import HeaderLimit
from .api.middleware.request_id import RequestIdFilter
from .api.openai_compat import router as openai_router
from .api.pages import setup_pages
from .api.setup import install_security
from .api.static import setup_static_files
from .config import Settings, get_settings
from .container import build_services
from .observability.logs import JsonFormatter
from .privacy.logfilter import install_log_filters
from .schemas.system import Liveness, ServiceInfo

logger = logging.getLogger(__name__)


def configure_logging(settings: Settings) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.log_file:
        handlers.append(logging.FileHandler(settings.log_file, encoding="utf-8"))
    for handler in handlers:
        handler.addFilter(RequestIdFilter())  # a request id on every line, whichever logger wrote it
        if settings.log_format == "json":
            handler.setFormatter(JsonFormatter())  # kept by basicConfig, which formats the others
    # No credential from a URL on any line, no personal data at INFO or above: on these handlers
    # and on uvicorn's own loggers (the access log), which do not reach them.
    install_log_filters(handlers)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s - %(name)s - %(levelname)s - [%(request_id)s] %(message)s",
        handlers=handlers,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("starting %s", settings.app_name)
        services = build_services(settings)
        await services.start()
        app.state.settings = settings
        app.state.services = services
        app.state.started_at = time.monotonic()
        app.state.drain = Drain(services.chat, settings.shutdown_grace_seconds)
        try:
            with app.state.drain.on_sigterm():
                yield
        finally:
            logger.info("stopping %s", settings.app_name)
            await services.aclose()

    app = FastAPI(
        title="智能客服系统 API",
        description="智能客服系统后端 API：流式问答、会话管理、图片上传与三层记忆检索",
        version=__version__,
        docs_url="/docs",
        redoc_url="/redoc",
        lifespan=lifespan,
    )
    setup_error_handlers(app)
    app.add_middleware(
        BodyLimit,
        default=settings.max_request_bytes,
        # A multipart body exceeds its file by the part headers; the file itself is held to MAX_FILE_SIZE.
        per_path={
            "/api/v1/chat/upload-image": settings.max_file_size + 64 * 1024,
            "/api/v1/admin/knowledge/import": settings.max_import_bytes + 64 * 1024,
            "/api/v1/admin/knowledge/import-jobs": settings.max_import_bytes + 64 * 1024,
        },
    )
    setup_cors(app, settings)
    # Oversized headers are refused before CORS, body parsing or routing look at the request.
    app.add_middleware(HeaderLimit, limit=settings.max_header_bytes)
    install_observability(app, settings)  # request metrics (and spans) inside the request ids
    install_security(app, settings)  # outermost: headers and request ids on every answer
    app.add_middleware(ReplicaHeader, name=replica_name(settings))
    setup_static_files(app)
    setup_pages(app)
    app.include_router(api_router, prefix="/api")
    app.include_router(openai_router)
    app.include_router(lifecycle_router)  # GET /ready

    @app.get("/", tags=["系统"])
    async def root() -> ServiceInfo:
        """服务信息。"""
        return ServiceInfo(
            message="智能客服系统 API",
            version=__version__,
            status="running",
            docs="/docs",
            health="/api/v1/chat/health",
        )

    @app.get("/health", tags=["系统"])
    async def health() -> Liveness:
        """进程存活检查。"""
        return Liveness(status="healthy", service="智能客服系统")

    return app


def __getattr__(name: str) -> FastAPI:
    # `c_app.main:app` is built on first access, so importing create_app (tests, tools) has no side effects.
    if name == "app":
        configure_logging(get_settings())
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
