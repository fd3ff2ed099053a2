"""What an operator must hear about before customers connect (the rules; api/setup.py logs them)."""

from __future__ import annotations

from ..config import Settings
from .auth import LOOPBACK_HOSTS


def startup_warnings(settings: Settings) -> list[str]:
    """Warnings about a risky configuration, in the order they should be logged."""
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
    limited = [settings.rate_limit_stream, settings.rate_limit_upload, settings.rate_limit_memory]
    if settings.workers > 1 and not settings.redis_url and any(limited + [settings.rate_limit_retrieve]):
        warnings.append(
            f"WORKERS={settings.workers} without REDIS_URL: each process counts rate limits on its own, so a "
            f"client gets up to {settings.workers}x the configured limits. Set REDIS_URL to share them."
        )
    return warnings
