"""Start the API: `python run_server.py` (HOST, PORT, WORKERS, RELOAD=1 and LOG_LEVEL from the environment).

WORKERS=N starts N server processes on the one port (uvicorn's supervisor restarts one that dies).
Each builds its own app: they share the database, follow the same memory change log, and count
rate limits in Redis when REDIS_URL is set (in-memory counters would be per process)."""

import os
import secrets
from pathlib import Path
from typing import Any

import uvicorn

from c_app.config import get_settings
from c_app.privacy.logfilter import uvicorn_log_config

# Room for the request line (method, path, query with a token) on top of the headers themselves.
REQUEST_LINE_ALLOWANCE = 8 * 1024


def log_config(log_format: str = "text") -> dict[str, Any]:
    """uvicorn's own logging set-up, with credentials redacted and personal data masked."""
    return uvicorn_log_config(log_format)


def clear_multiprocess_dir(path: str | None) -> None:
    """Several worker processes share PROMETHEUS_MULTIPROC_DIR; a new run starts it empty."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        for stale in Path(path).glob("*.db"):
            stale.unlink()


def share_process_secrets(workers: int) -> None:
    """Workers must agree on what a single process makes up for itself: without URL_SIGNING_SECRET
    each would sign upload URLs with its own random key, and a URL signed by one would be refused
    by the next. One random key for this start, handed to every worker through the environment."""
    if workers > 1 and not os.environ.get("URL_SIGNING_SECRET"):
        os.environ["URL_SIGNING_SECRET"] = secrets.token_urlsafe(32)


if __name__ == "__main__":
    settings = get_settings()
    clear_multiprocess_dir(settings.prometheus_multiproc_dir)
    share_process_secrets(1 if settings.reload else settings.workers)
    uvicorn.run(
        "c_app.main:app",
        host=settings.host,
        port=settings.port,
        reload=settings.reload,
        workers=1 if settings.reload else settings.workers,
        reload_dirs=["c_app"] if settings.reload else None,
        log_level=settings.log_level.lower(),
        log_config=log_config(settings.log_format),
        # h11 (when chosen) refuses a request head past this; httptools has no such limit, so the
        # app's HeaderLimit middleware answers 431 past MAX_HEADER_BYTES either way.
        h11_max_incomplete_event_size=settings.max_header_bytes + REQUEST_LINE_ALLOWANCE,
        # A backstop after the app's own drain on SIGTERM (SHUTDOWN_GRACE_SECONDS, api/lifecycle.py).
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 10,
    )
