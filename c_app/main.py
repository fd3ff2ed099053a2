"""The FastAPI application: `uvicorn c_app.main:app`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from . import __version__
from .api import api_router
from .api.deps import Services
from .api.middleware.body_limit import BodyLimit
from .api.middleware.cors import setup_cors
from .api.middleware.error_handler import setup_error_handlers
from .api.static import setup_static_files
from .config import Settings, get_settings
from .db.engine import Database
from .engines.kb_responder import KnowledgeBaseResponder
from .services.chat_service import ChatService
from .services.memory_service import MemoryService
from .services.session_service import SessionService
from .services.upload_service import UploadService
from .utils.init_memory_db import init_memory_database

logger = logging.getLogger(__name__)


def configure_logging(settings: Settings) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.log_file:
        handlers.append(logging.FileHandler(settings.log_file, encoding="utf-8"))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s - %(name)s - %(levelname)s - %(message)s",
        handlers=handlers,
    )


def build_services(settings: Settings, db: Database) -> Services:
    memory = MemoryService(db, settings)
    sessions = SessionService(db)
    engine = KnowledgeBaseResponder(threshold=memory.answer_threshold, company=settings.company_name)
    return Services(
        sessions=sessions,
        memory=memory,
        uploads=UploadService(db, settings),
        chat=ChatService(db, settings, sessions, memory, engine),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("starting %s", settings.app_name)
        db = Database(settings)
        services = build_services(settings, db)
        await init_memory_database(settings, db, services.memory)
        app.state.settings = settings
        app.state.db = db
        app.state.services = services
        app.state.started_at = time.monotonic()
        try:
            yield
        finally:
            logger.info("stopping %s", settings.app_name)
            await db.dispose()

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
        per_path={"/api/v1/chat/upload-image": settings.max_file_size + 64 * 1024},
    )
    setup_cors(app, settings)
    setup_static_files(app, settings.upload_dir)
    app.include_router(api_router, prefix="/api")

    @app.get("/", tags=["系统"])
    async def root() -> JSONResponse:
        """服务信息。"""
        return JSONResponse(
            content={
                "message": "智能客服系统 API",
                "version": __version__,
                "status": "running",
                "docs": "/docs",
                "health": "/api/v1/chat/health",
            }
        )

    @app.get("/health", tags=["系统"])
    async def health() -> JSONResponse:
        """进程存活检查。"""
        return JSONResponse(content={"status": "healthy", "service": "智能客服系统"})

    return app


def __getattr__(name: str) -> FastAPI:
    # `c_app.main:app` is built on first access, so importing create_app (tests, tools) has no side effects.
    if name == "app":
        configure_logging(get_settings())
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
