"""Wire security into an app: credentials checker, rate limits, headers, request ids, start-up warnings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from ..api.middleware.request_id import RequestId
from ..api.middleware.security_headers import SecurityHeaders
from ..api.openapi import install_openapi
from ..config import Settings
from .auth import LOOPBACK_HOSTS, Authenticator
from .rate_limit import RateLimits

logger = logging.getLogger(__name__)


def startup_warnings(settings: Settings) -> list[str]:
    """What an operator must hear about before customers connect."""
    warnings: list[str] = []
    if settings.auth_mode == "none" and settings.host not in LOOPBACK_HOSTS:
        warnings.append(
            f"!!! AUTH_MODE=none while listening on {settings.host}: anyone who can reach this port can read "
            "and write every customer's conversations. Set AUTH_MODE=api_key or jwt, or HOST=127.0.0.1. !!!"
        )
    if settings.auth_mode != "none" and settings.url_signing_secret is None:
        warnings.append(
            "URL_SIGNING_SECRET is unset: upload URLs are signed with a random per-process key, so they stop "
            "working after a restart and on other replicas."
        )
    return warnings


def setup_security(app: FastAPI, settings: Settings) -> None:
    """Call after the other middleware is added, so these two wrap everything (413s and CORS answers too)."""
    app.state.authenticator = Authenticator(settings)  # raises on an unusable auth configuration
    app.add_middleware(SecurityHeaders, hsts_seconds=settings.hsts_seconds)
    app.add_middleware(RequestId)
    install_openapi(app)  # errors documented as the envelope they are

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
