"""CORS from configuration only (the seed's origins are the default)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ...config import Settings


def setup_cors(app: FastAPI, settings: Settings) -> None:
    origins = settings.cors_origins
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        # Credentials with a wildcard origin would let any site read a customer's data.
        allow_credentials="*" not in origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-Requested-With", "Accept", "Origin", "X-User-Id"],
        expose_headers=["Content-Length", "Content-Type", "Cache-Control", "X-Request-Id", "Retry-After"],
    )
