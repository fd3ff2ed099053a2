"""No credential in any log line: query parameters that carry one are logged as `[REDACTED]`.

Browsers cannot set headers on a WebSocket handshake or an `<img>`, so some credentials travel in
URLs: `?token=` on the WebSocket (and on old chat-page links), `?exp=&sig=` on signed upload URLs.
uvicorn writes every request line in full (`uvicorn.access`, whose record args hold the path with
its query; WebSocket handshakes on `uvicorn.error`), so `RedactSecrets` rewrites records before any
handler formats them:

- on the uvicorn loggers themselves (`install_log_redaction`, called by every app and by
  `configure_logging`), which covers `uvicorn c_app.main:app`, `run_server.py` and an app served
  by any other uvicorn set-up;
- on our own handlers (`configure_logging` in c_app/main.py), which covers every other logger;
- in run_server.py's log configuration, from the very first line uvicorn writes.

A parameter is redacted when its name looks like a credential (token, access_token, sig, signature,
key, api_key, password, secret, auth, ...); `Bearer <value>` is redacted too. The record keeps its
shape (uvicorn's access formatter unpacks its five args) whenever that is possible.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

REDACTED = "[REDACTED]"
# A name=value pair of a query string (or a form body quoted in a message).
_PARAM = re.compile(r"(?P<head>[?&;](?P<name>[^=&;?#\s\"']{1,64})=)(?P<value>[^&;#\s\"']*)")
_SENSITIVE_NAME = re.compile(
    r"token|secret|passw|signature|credential|auth|jwt|session[-_]?key|api[-_]?key|private"
    r"|(?:^|[-_.])(?:sig|key|pwd|pass|code)$",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def _sensitive(name: str) -> bool:
    return bool(_SENSITIVE_NAME.search(unquote_plus(name)))


def _param(match: re.Match[str]) -> str:
    if not match["value"] or not _sensitive(match["name"]):
        return match[0]
    return match["head"] + REDACTED


def redact(text: str) -> str:
    """`text` with the value of every credential-like query parameter (and bearer token) replaced."""
    if "=" in text:
        text = _PARAM.sub(_param, text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(lambda m: m[1] + REDACTED, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites a record so that its message, its args and its traceback carry no credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # a malformed record: logging reports it; leave it
            return True
        clean = redact(message)
        if clean != message:
            self._clean(record, clean)
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True

    @staticmethod
    def _clean(record: logging.LogRecord, clean: str) -> None:
        args = record.args
        if isinstance(args, tuple) and args:
            # Keep msg and args apart when redacting each gives the same line (uvicorn's access
            # formatter reads the args); otherwise log the cleaned line itself.
            new_args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in args)
            template = redact(record.msg) if isinstance(record.msg, str) else record.msg
            try:
                same = str(template) % new_args == clean
            except (TypeError, ValueError, KeyError):
                same = False
            if same:
                record.msg, record.args = template, new_args
                return
        record.msg, record.args = clean, None


_FILTER = RedactSecrets()


def _attach(target: logging.Logger | logging.Handler) -> None:
    if not any(isinstance(existing, RedactSecrets) for existing in target.filters):
        target.addFilter(_FILTER)


def install_log_redaction(handlers: Iterable[logging.Handler] = ()) -> None:
    """Put `RedactSecrets` on uvicorn's loggers and their handlers, and on `handlers` (idempotent)."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        _attach(logger)
        for handler in logger.handlers:
            _attach(handler)
    for handler in handlers:
        _attach(handler)
