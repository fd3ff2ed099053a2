"""LOG_FORMAT=json: one JSON object a line (time, level, logger, message, request_id, and any extra).

The log filters (c_app/privacy/logfilter.py) rewrite a record before any formatter sees it, so a
JSON line is redacted and masked as a text line is: message, exception and stack alike.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s"
RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}
# uvicorn repeats its message template with colour codes in `color_message`: not a field of ours.
_DROPPED = [*RESERVED_ATTRS, "color_message"]


class JsonFormatter(_JsonFormatter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", FIELDS)
        kwargs.setdefault("rename_fields", RENAMED)
        kwargs.setdefault("reserved_attrs", _DROPPED)
        kwargs.setdefault("json_ensure_ascii", False)
        super().__init__(*args, **kwargs)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = "-"  # a handler without RequestIdFilter: outside any request
        if record.exc_info and record.exc_text:
            # The filters rewrote the formatted traceback (exc_text); the parent would format
            # exc_info afresh, undoing that. A copy keeps the record intact for other handlers.
            record = logging.makeLogRecord(record.__dict__)
            record.exc_info = None
        return super().format(record)
