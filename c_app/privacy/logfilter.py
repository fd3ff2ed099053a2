"""No credential in any log line, and no personal data at INFO or above.

Two filters rewrite a record before any handler formats it: the message formatted with its args,
the formatted exception and the stack.

- `RedactSecrets`: the value of every query parameter that looks like a credential (token,
  access_token, sig, signature, key, api_key, password, secret, auth, ...) and `Bearer <value>`
  become `[REDACTED]`, at every level. Browsers cannot set headers on a WebSocket handshake or an
  `<img>`, so some credentials travel in URLs (`?token=`, `?exp=&sig=`), and uvicorn writes every
  request line in full.
- `MaskPersonalData`: phone, ID, card, e-mail, landline, plate and address values become
  `[手机号1]` ... (`pii.mask_text`, URL-escaped text included) at INFO and above. DEBUG records are
  left as they are (not written in production; aiosqlite logs SQL parameters there).

`install_log_filters` puts both on uvicorn's own loggers, which do not propagate to the root (its
access log names each path with its query), and on the given handlers; every app does it
(api/setup.py), `configure_logging` (c_app/main.py) for the app's handlers, and run_server.py's
log configuration from uvicorn's very first line. A record keeps its shape (uvicorn's access
formatter unpacks its five args) whenever the rewritten args give the same line.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, unquote_plus

from .pii import mask_text

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

REDACTED = "[REDACTED]"
# A name=value pair of a query string (or a form body quoted in a message).
_PARAM = re.compile(r"(?P<head>[?&;](?P<name>[^=&;?#\s\"']{1,64})=)(?P<value>[^&;#\s\"']*)")
_SENSITIVE_NAME = re.compile(
    r"token|secret|passw|signature|credential|auth|jwt|session[-_]?key|api[-_]?key|private"
    r"|(?:^|[-_.])(?:sig|key|pwd|pass|code)$",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")


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


def mask_log_text(text: str) -> str:
    """`mask_text`, also seeing through URL escapes: uvicorn's access log quotes the path, so a user
    id that is an e-mail address is logged as zhang.san%40example.com. Only when the decoded text
    holds personal data is it the decoded text, masked, that is returned."""
    if "%" in text:
        decoded = unquote(text)
        if decoded != text:
            masked = mask_text(decoded)
            if masked != decoded:
                return masked
    return mask_text(text)


def rewrite_record(record: logging.LogRecord, rewrite: Callable[[str], str]) -> None:
    """Rewrite a record's message (args included), exception text and stack with `rewrite`."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record: logging reports it, we leave it alone
        message = None
    if message is not None:
        clean = rewrite(message)
        if clean != message:
            _store(record, clean, rewrite)
    if record.exc_info and not record.exc_text:
        # Formatted here, as Formatter.format would, so that the text written is the rewritten one.
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = rewrite(record.exc_text)
    if record.stack_info:
        record.stack_info = rewrite(record.stack_info)


def _store(record: logging.LogRecord, clean: str, rewrite: Callable[[str], str]) -> None:
    # Keep msg and args apart when rewriting each gives the same line (uvicorn's access formatter
    # unpacks its args); otherwise the rewritten line itself becomes the message.
    args = record.args
    if isinstance(args, tuple) and args and isinstance(record.msg, str):
        new_args = tuple(rewrite(arg) if isinstance(arg, str) else arg for arg in args)
        template = rewrite(record.msg)
        try:
            same = template % new_args == clean
        except (TypeError, ValueError, KeyError):
            same = False
        if same:
            record.msg, record.args = template, new_args
            return
    record.msg, record.args = clean, None


def mask_record(record: logging.LogRecord) -> None:
    rewrite_record(record, mask_log_text)


class RedactSecrets(logging.Filter):
    """No credential in a record's message, args or traceback (every level); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        rewrite_record(record, redact)
        return True


class MaskPersonalData(logging.Filter):
    """Masks personal data in every record at INFO or above; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO:
            mask_record(record)
        return True


_FILTERS: tuple[logging.Filter, ...] = (RedactSecrets(), MaskPersonalData())


def install_log_filters(handlers: Iterable[logging.Handler] = ()) -> None:
    """Put both filters on uvicorn's loggers and their handlers, and on `handlers` (idempotent)."""
    targets: list[logging.Logger | logging.Handler] = []
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        targets += [logger, *logger.handlers]
    targets += list(handlers)
    for target in targets:
        for log_filter in _FILTERS:
            if not any(isinstance(existing, type(log_filter)) for existing in target.filters):
                target.addFilter(log_filter)


def uvicorn_log_config(log_format: str = "text") -> dict[str, Any]:
    """uvicorn's own logging set-up, with credentials redacted and personal data masked in every
    line it writes (the access log names each path with its query: `?token=`, `?sig=`), for
    run_server.py and `c-app serve`; LOG_FORMAT=json: one JSON object a line, with the request id."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {}).update(
        redact_secrets={"()": RedactSecrets}, mask_personal_data={"()": MaskPersonalData}
    )
    for target in [
        *config["handlers"].values(),
        *(config["loggers"].setdefault(n, {}) for n in UVICORN_LOGGERS),
    ]:
        target.setdefault("filters", []).extend(["redact_secrets", "mask_personal_data"])
    if log_format == "json":  # the classes are named, not imported: logging builds them
        json_formatter = {"()": "c_app.observability.logs.JsonFormatter"}
        config["formatters"] = {"default": json_formatter, "access": dict(json_formatter)}
        config["filters"]["request_id"] = {"()": "c_app.api.middleware.request_id.RequestIdFilter"}
        for handler in config["handlers"].values():
            handler["filters"].append("request_id")
    return config
