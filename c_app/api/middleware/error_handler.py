"""Every error in the seed's envelope: {"success": false, "error": {code, message, type}, "timestamp"}.

Exception handlers rather than a BaseHTTPMiddleware (which never sees HTTPException: FastAPI turns
those into responses before a middleware could catch them). A 500 names nothing internal.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...errors import AppError

logger = logging.getLogger(__name__)

# Starlette's own English details, in the language our clients read.
_DEFAULT_MESSAGES = {
    400: "请求格式错误",
    401: "未认证",
    403: "禁止访问",
    404: "请求的资源不存在",
    405: "请求方法不允许",
    413: "请求体过大",
    415: "不支持的媒体类型",
    429: "请求过于频繁，请稍后再试",
    431: "请求头过大",
    500: "服务器内部错误",
    503: "服务暂时不可用",
}


def envelope(
    status_code: int,
    message: str,
    error_type: str,
    *,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    error: dict[str, Any] = {"code": status_code, "message": message, "type": error_type}
    if details is not None:
        error["details"] = details
    return JSONResponse(
        status_code=status_code,
        content={"success": False, "error": error, "timestamp": datetime.now(UTC).isoformat()},
        headers=headers,
    )


async def _app_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    if exc.status_code >= 500:
        logger.error("%s: %s", type(exc).__name__, exc.message)
    details = jsonable_encoder(exc.details) if exc.details is not None else None
    return envelope(exc.status_code, exc.message, exc.error_type, details=details, headers=exc.headers)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    # Framework errors carry English details ("Not Found", "Content Too Large"): say them in Chinese.
    if not isinstance(detail, str) or detail.isascii():
        detail = _DEFAULT_MESSAGES.get(exc.status_code, "请求错误")
    return envelope(exc.status_code, detail, "HTTPException", headers=getattr(exc, "headers", None))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Where and what, never the submitted value (it may be huge or hold personal data).
    details = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    return envelope(422, "请求参数格式错误", "ValidationError", details=jsonable_encoder(details))


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The database is down or unreachable: say so, and let the client retry; the service recovers by itself.
    logger.error("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return envelope(503, "服务暂时不可用，请稍后重试", "ServiceUnavailable", headers={"Retry-After": "5"})


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return envelope(500, "服务器内部错误", "InternalServerError")


def setup_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for exc_class in (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, ConnectionError):
        app.add_exception_handler(exc_class, _unavailable)
    app.add_exception_handler(Exception, _unhandled)
