"""The application's errors. Handlers in api/middleware/error_handler.py render them in the seed's envelope.

AppError (500)
├── BadRequest (400)
├── Unauthorized (401)
├── Forbidden (403)
├── NotFound (404)
├── Conflict (409)
├── PayloadTooLarge (413)
├── ValidationFailed (422, type "ValidationError")
├── TooManyRequests (429)
└── ServiceUnavailable (503)
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status_code = 500
    # The seed's envelope calls every expected HTTP error "HTTPException"; clients may match on it.
    error_type = "HTTPException"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details  # shown as error.details when not None (e.g. the rows an import refused)
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


class ValidationFailed(AppError):
    """The request is well-formed but its content is not acceptable, with `details` saying where."""

    status_code = 422
    error_type = "ValidationError"


class TooManyRequests(AppError):
    status_code = 429


class ServiceUnavailable(AppError):
    status_code = 503
