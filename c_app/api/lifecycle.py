"""A replica's life in a fleet: readiness (`GET /ready`), graceful drain on SIGTERM, and the
`X-Replica` header naming the process that answered.

Drain. uvicorn, on SIGTERM, stops listening, closes idle connections and waits for the open ones
to finish; the app's lifespan shutdown starts only after the last has closed. So the app hooks
the signal itself, in front of uvicorn's handler: the moment it arrives, the replica reports
not ready and refuses new turns (503 in the seed's envelope), streams in flight may finish for
up to SHUTDOWN_GRACE_SECONDS, then the rest are stopped, stored as interrupted, and end with
`done`; their connections close, and uvicorn exits. SIGINT (Ctrl-C) is left to uvicorn as it is.
Signals can only be hooked from the main thread: an app served from a thread (tests/servers.py)
drains when `begin_drain` is called.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from fastapi import APIRouter, Request, Response
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Settings
from ..schemas.system import Readiness, ReadinessChecks
from ..security.rate_limit import RateLimits
from ..services.chat_service import ChatService

logger = logging.getLogger(__name__)

router = APIRouter(tags=["系统"])


class Drain:
    """Starts the chat service's drain once, from a signal handler or a direct call."""

    def __init__(self, chat: ChatService, grace: float) -> None:
        self.chat = chat
        self.grace = grace
        self.task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def begin(self) -> None:
        """Not ready from this instant; the drain task runs on the app's loop."""
        if self.chat.draining:
            return
        self.chat.draining = True  # a plain flag: safe to set from a signal handler
        logger.info("draining: no new turns, %.0f s for streams in flight", self.grace)
        loop = self._loop or asyncio.get_running_loop()
        loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self.chat.drain(self.grace))

    @contextmanager
    def on_sigterm(self) -> Iterator[None]:
        """While the app runs: SIGTERM begins the drain, then reaches the handler it replaced
        (uvicorn's, which stops the server once connections close)."""
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGTERM)

        def handle(sig: int, frame: FrameType | None) -> None:
            self.begin()
            if callable(previous):
                previous(sig, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.raise_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, handle)
        try:
            yield
        finally:
            if signal.getsignal(signal.SIGTERM) is handle:
                signal.signal(signal.SIGTERM, previous)
            if self.task is not None and not self.task.done():
                self.task.cancel()


@router.get("/ready", responses={503: {"model": Readiness, "description": "未就绪（正在停机或依赖不可用）"}})
async def ready(request: Request, response: Response) -> Readiness:
    """就绪检查：数据库、Redis（已配置时）、知识库索引均可用且未在停机；否则 503。"""
    services = request.app.state.services
    checks = ReadinessChecks(draining=services.chat.draining)
    try:
        await services.db.ping()
    except Exception:
        logger.warning("ready: database unreachable", exc_info=True)
        checks.database = "unhealthy"
    limits: RateLimits = request.app.state.rate_limits
    if services.settings.redis_url:
        try:
            if not await limits.storage.check():
                checks.redis = "unhealthy"
        except Exception:
            logger.warning("ready: redis unreachable", exc_info=True)
            checks.redis = "unhealthy"
    else:
        checks.redis = "not_configured"
    if not services.sync.loaded:
        checks.index = "unhealthy"
    ok = not checks.draining and "unhealthy" not in (checks.database, checks.redis, checks.index)
    if not ok:
        response.status_code = 503
    return Readiness(
        status="ready" if ok else "not_ready", replica=replica_name(services.settings), checks=checks
    )


def replica_name(settings: Settings) -> str:
    """REPLICA_ID, or the host name (a container's is its id)."""
    return str(settings.replica_id or socket.gethostname())


class ReplicaHeader:
    """`X-Replica: <name>` on every HTTP answer, so a load balancer's choice can be seen."""

    def __init__(self, app: ASGIApp, *, name: str) -> None:
        self.app = app
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Replica"] = self.name
            await send(message)

        await self.app(scope, receive, send_with_header)
