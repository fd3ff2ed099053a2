"""Wire security into an app: credentials checker, rate limits, headers, request ids, log redaction,
start-up warnings.

The rules live in c_app/security (who may do what, how much, signatures); this is the HTTP wiring,
so security/ never imports from api/.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from ..config import Settings
from ..privacy.logfilter import install_log_filters
from ..security.auth import Authenticator
from ..security.rate_limit import RateLimits
from ..security.startup import startup_warnings
from .middleware.request_id import RequestId
from .middleware.security_headers import SecurityHeaders
from .openapi import install_openapi

logger = logging.getLogger(__name__)


def install_security(app: FastAPI, settings: Settings) -> None:
    """Call after the other middleware is added, so these two wrap everything (413s and CORS answers too)."""
    app.state.authenticator = Authenticator(settings)  # raises on an unusable auth configuration
    app.add_middleware(SecurityHeaders, hsts_seconds=settings.hsts_seconds)
    app.add_middleware(RequestId)
    install_openapi(app)  # errors documented as the envelope they are
    # Whoever serves the app (run_server.py, `uvicorn c_app.main:app`, a factory), uvicorn's access log
    # and WebSocket lines name paths with their query: keep `?token=` and `?sig=` values out of them.
    install_log_filters()

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        for message in startup_warnings(settings):
            logger.warning(message)
        # Built inside the running loop: the in-memory storage starts its expiry task on creation.
        limits = RateLimits(settings)
        application.state.rate_limits = limits
        try:
            async with inner(application) as state:
                yield state
        finally:
            await limits.aclose()

    app.router.lifespan_context = lifespan
