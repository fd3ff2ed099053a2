"""No personal data in the logs at INFO or above.

`MaskPersonalData` rewrites a record before it is written: the message formatted with its args,
the formatted exception and the stack are masked with `pii.mask_text` (phone, ID, card, e-mail,
landline, plate and address values become `[手机号1]` ...), URL-escaped text included. DEBUG records are left as they are
(they are not written in production, and masking costs time).

It is attached by `configure_logging` (c_app/main.py) to the app's handlers, which every logger
propagating to the root reaches, and by `install_log_masking` to uvicorn's own loggers, which do
not propagate there (the access log names each path: /sessions/<user id>).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import unquote

from .pii import mask_text

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


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


class MaskPersonalData(logging.Filter):
    """Masks personal data in every record at INFO or above; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO:
            mask_record(record)
        return True


def mask_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record: logging reports it, we leave it alone
        message = None
    if message is not None:
        clean = mask_log_text(message)
        if clean != message:
            _store(record, clean)
    if record.exc_info and not record.exc_text:
        # Formatted here, as Formatter.format would, so that the text written is the masked one.
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = mask_log_text(record.exc_text)
    if record.stack_info:
        record.stack_info = mask_log_text(record.stack_info)


def _store(record: logging.LogRecord, clean: str) -> None:
    # Keep msg and args apart when masking each gives the same line (uvicorn's access formatter
    # unpacks its args); otherwise the masked line itself becomes the message.
    args = record.args
    if isinstance(args, tuple) and args and isinstance(record.msg, str):
        new_args = tuple(mask_log_text(arg) if isinstance(arg, str) else arg for arg in args)
        template = mask_text(record.msg)
        try:
            same = template % new_args == clean
        except (TypeError, ValueError, KeyError):
            same = False
        if same:
            record.msg, record.args = template, new_args
            return
    record.msg, record.args = clean, None


_FILTER = MaskPersonalData()


def _attach(target: logging.Logger | logging.Handler) -> None:
    if not any(isinstance(existing, MaskPersonalData) for existing in target.filters):
        target.addFilter(_FILTER)


def install_log_masking(handlers: Iterable[logging.Handler] = ()) -> None:
    """Put `MaskPersonalData` on uvicorn's loggers and their handlers, and on `handlers` (idempotent)."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        _attach(logger)
        for handler in logger.handlers:
            _attach(handler)
    for handler in handlers:
        _attach(handler)
