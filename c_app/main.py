"""The FastAPI application: `uvicorn c_app.main:app`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from openai import AsyncOpenAI

from . import __version__
from .api import api_router
from .api.chat_page import setup_chat_page
from .api.deps import Services
from .api.middleware.body_limit import BodyLimit
from .api.middleware.cors import setup_cors
from .api.middleware.error_handler import setup_error_handlers
from .api.middleware.request_id import RequestIdFilter
from .api.openai_compat import router as openai_router
from .api.static import setup_static_files
from .config import Settings, get_settings
from .db.engine import Database
from .engines.base import Engine
from .engines.fallback import FallbackEngine
from .engines.kb_responder import KnowledgeBaseResponder
from .engines.llm_responder import LLMResponder
from .retrieval.dense import EmbeddingClient
from .security.setup import setup_security
from .services.chat_service import ChatService
from .services.dense_search import DenseSearch
from .services.memory_service import MemoryService
from .services.session_service import SessionService
from .services.upload_service import UploadService
from .utils.init_memory_db import init_memory_database

logger = logging.getLogger(__name__)


def configure_logging(settings: Settings) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.log_file:
        handlers.append(logging.FileHandler(settings.log_file, encoding="utf-8"))
    for handler in handlers:
        handler.addFilter(RequestIdFilter())  # a request id on every line, whichever logger wrote it
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s - %(name)s - %(levelname)s - [%(request_id)s] %(message)s",
        handlers=handlers,
    )


def build_engine(settings: Settings, memory: MemoryService) -> Engine:
    """The knowledge-base responder, or the model with the knowledge base as its fallback."""
    kb = KnowledgeBaseResponder(
        threshold=memory.answer_threshold,
        memory_threshold=settings.memory_answer_threshold,
        company=settings.company_name,
        margin=settings.answer_margin,
    )
    if settings.llm_api_key is None:
        return kb
    client = AsyncOpenAI(
        api_key=settings.llm_api_key.get_secret_value(),
        base_url=settings.llm_base_url,
        timeout=httpx.Timeout(settings.llm_timeout, connect=min(settings.llm_timeout, 10.0)),
        max_retries=settings.llm_max_retries,
    )
    llm = LLMResponder(
        client=client,
        model=settings.llm_model,
        company=settings.company_name,
        history_budget=settings.llm_history_tokens,
        max_tool_rounds=settings.llm_max_tool_rounds,
        temperature=settings.llm_temperature,
        max_tokens=settings.llm_max_tokens,
    )
    return FallbackEngine(llm, kb)


def build_dense(settings: Settings, db: Database) -> DenseSearch | None:
    """Dense retrieval over the knowledge base, when an embeddings endpoint is configured."""
    if not settings.embedding_base_url:
        return None
    client = EmbeddingClient(
        base_url=settings.embedding_base_url,
        model=settings.embedding_model,
        api_key=settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else None,
        timeout=settings.embedding_timeout,
        batch_size=settings.embedding_batch_size,
    )
    return DenseSearch(db, settings, client)


def build_services(settings: Settings, db: Database) -> Services:
    memory = MemoryService(db, settings)
    memory.dense = build_dense(settings, db)
    sessions = SessionService(db)
    uploads = UploadService(db, settings)
    engine = build_engine(settings, memory)
    sends_images = settings.llm_api_key is not None and settings.llm_send_images
    return Services(
        sessions=sessions,
        memory=memory,
        uploads=uploads,
        chat=ChatService(db, settings, sessions, memory, uploads, engine, sends_images=sends_images),
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
            close_engine = getattr(services.chat.engine, "aclose", None)
            if close_engine is not None:
                await close_engine()
            await services.memory.stop()
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
        per_path={
            "/api/v1/chat/upload-image": settings.max_file_size + 64 * 1024,
            "/api/v1/admin/knowledge/import": settings.max_import_bytes + 64 * 1024,
        },
    )
    setup_cors(app, settings)
    setup_security(app, settings)  # outermost: headers and request ids on every answer
    setup_static_files(app, settings.upload_dir)
    setup_chat_page(app)
    app.include_router(api_router, prefix="/api")
    app.include_router(openai_router)

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
