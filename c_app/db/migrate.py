"""Apply the Alembic revisions in migrations/ to the configured database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_LOCK_KEY = 7_420_001  # PostgreSQL advisory lock: replicas starting together migrate one at a time


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _upgrade(connection: Any, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(engine: AsyncEngine, revision: str = "heads") -> None:
    """Processes starting together (replicas, `WORKERS=N`) migrate one at a time: the others wait,
    then find the schema current. PostgreSQL: an advisory lock. SQLite: the database's write lock,
    taken up front (its driver would otherwise run each CREATE outside any transaction, and two
    processes would both create the first table); a waiting process queues for SQLITE_BUSY_TIMEOUT_MS."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        elif conn.dialect.name == "sqlite":
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        await conn.run_sync(_upgrade, revision)
