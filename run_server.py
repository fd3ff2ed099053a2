"""Start the API: `python run_server.py` (HOST, PORT, RELOAD=1 and LOG_LEVEL from the environment)."""

import copy
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from c_app.config import get_settings
from c_app.privacy.logfilter import UVICORN_LOGGERS, MaskPersonalData, RedactSecrets

# Room for the request line (method, path, query with a token) on top of the headers themselves.
REQUEST_LINE_ALLOWANCE = 8 * 1024


def log_config(log_format: str = "text") -> dict[str, Any]:
    """uvicorn's own logging set-up, with credentials redacted and personal data masked in every
    line it writes (the access log names each path with its query: `?token=`, `?sig=`)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {}).update(
        redact_secrets={"()": RedactSecrets}, mask_personal_data={"()": MaskPersonalData}
    )
    for target in [
        *config["handlers"].values(),
        *(config["loggers"].setdefault(n, {}) for n in UVICORN_LOGGERS),
    ]:
        target.setdefault("filters", []).extend(["redact_secrets", "mask_personal_data"])
    if log_format == "json":  # LOG_FORMAT=json: one JSON object a line, with the request id
        json_formatter = {"()": "c_app.observability.logs.JsonFormatter"}
        config["formatters"] = {"default": json_formatter, "access": dict(json_formatter)}
        config["filters"]["request_id"] = {"()": "c_app.api.middleware.request_id.RequestIdFilter"}
        for handler in config["handlers"].values():
            handler["filters"].append("request_id")
    return config


def clear_multiprocess_dir(path: str | None) -> None:
    """Several worker processes share PROMETHEUS_MULTIPROC_DIR; a new run starts it empty."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        for stale in Path(path).glob("*.db"):
            stale.unlink()


if __name__ == "__main__":
    settings = get_settings()
    clear_multiprocess_dir(settings.prometheus_multiproc_dir)
    uvicorn.run(
        "c_app.main:app",
        host=settings.host,
        port=settings.port,
        reload=settings.reload,
        reload_dirs=["c_app"] if settings.reload else None,
        log_level=settings.log_level.lower(),
        log_config=log_config(settings.log_format),
        # h11 (when chosen) refuses a request head past this; httptools has no such limit, so the
        # app's HeaderLimit middleware answers 431 past MAX_HEADER_BYTES either way.
        h11_max_incomplete_event_size=settings.max_header_bytes + REQUEST_LINE_ALLOWANCE,
    )
