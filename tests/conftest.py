"""Fixtures: each test gets a fresh database on the backend chosen by C_APP_TEST_DB.

C_APP_TEST_DB=sqlite (default): a new SQLite file per test.
C_APP_TEST_DB=postgresql: a new schema per test in the PostgreSQL at C_APP_TEST_PG_URL
(default postgresql://postgres@127.0.0.1:5432/test), dropped afterwards, so concurrent runs
never see each other.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from c_app.config import Settings
from c_app.main import create_app

from .llm_standin import StandIn

BACKEND = os.environ.get("C_APP_TEST_DB", "sqlite")
PG_URL = os.environ.get("C_APP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def database_settings(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Settings that point at a fresh, empty database."""
    if BACKEND == "sqlite":
        yield {"memory_db_path": str(tmp_path / "customer_service.db")}
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield {"database_url": PG_URL, "database_schema": schema}
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.fixture
def make_settings(tmp_path: Path, database_settings: dict[str, Any]) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "upload_dir": str(tmp_path / "uploads"),
            "index_refresh_interval": 0.0,
            **database_settings,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


AppFactory = Callable[..., Awaitable[tuple[FastAPI, httpx.AsyncClient]]]


@pytest.fixture
async def start_app(make_settings: Callable[..., Settings]) -> AsyncIterator[AppFactory]:
    """Start an app (lifespan included) and an httpx client on it; both are closed after the test."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> tuple[FastAPI, httpx.AsyncClient]:
            app = create_app(make_settings(**overrides))
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
            )
            return app, client

        yield start


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """The OpenAI-compatible stand-in model on a loopback port; `standin.base_url` ends in /v1.
    Closed before its server stops, so a request left hanging ends at once."""
    stand = StandIn()
    with stand.serving():
        yield stand


@pytest.fixture
async def app_client(start_app: AppFactory) -> tuple[FastAPI, httpx.AsyncClient]:
    return await start_app()


@pytest.fixture
def app(app_client: tuple[FastAPI, httpx.AsyncClient]) -> FastAPI:
    return app_client[0]


@pytest.fixture
def client(app_client: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app_client[1]
