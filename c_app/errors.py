"""The application's errors. Handlers in api/middleware/error_handler.py render them in the seed's envelope.

    AppError (500)
    ├── BadRequest (400)
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── Conflict (409)
    ├── PayloadTooLarge (413)
    ├── TooManyRequests (429)
    └── ServiceUnavailable (503)
"""

from __future__ import annotations


class AppError(Exception):
    status_code = 500
    # The seed's envelope calls every expected HTTP error "HTTPException"; clients may match on it.
    error_type = "HTTPException"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class BadRequest(AppError):
    status_code = 400


class Unauthorized(AppError):
    status_code = 401


class Forbidden(AppError):
    status_code = 403


class NotFound(AppError):
    status_code = 404


class Conflict(AppError):
    status_code = 409


class PayloadTooLarge(AppError):
    status_code = 413


class TooManyRequests(AppError):
    status_code = 429


class ServiceUnavailable(AppError):
    status_code = 503
