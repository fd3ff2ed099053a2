"""schemathesis against the app's own OpenAPI document, in process (ASGI): no 5xx, responses match the schema.

Bounded and derandomized (15 examples per operation) so CI time is predictable. The app runs on the
backend chosen by C_APP_TEST_DB, in a database of its own, with rate limits off (they would answer
429 to a fuzzer, which is right but uninteresting) and ADMIN_TOKEN sent so admin routes are reached.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from c_app.config import Settings
from c_app.main import create_app

from .conftest import BACKEND, PG_URL

ADMIN = "schemathesis-admin-token"
_workdir = Path(tempfile.mkdtemp(prefix="c_app-schemathesis-"))
_schema_name = f"st_{uuid.uuid4().hex[:12]}"


def _database() -> dict[str, str]:
    if BACKEND == "sqlite":
        return {"memory_db_path": str(_workdir / "db.sqlite")}

    async def create() -> None:
        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f'CREATE SCHEMA "{_schema_name}"')
        await conn.close()

    asyncio.run(create())
    return {"database_url": PG_URL, "database_schema": _schema_name}


app = create_app(
    Settings(
        _env_file=None,  # type: ignore[call-arg]
        upload_dir=str(_workdir / "uploads"),
        index_refresh_interval=0.0,
        admin_token=ADMIN,
        rate_limit_stream="0",
        rate_limit_upload="0",
        rate_limit_memory="0",
        host="127.0.0.1",
        **_database(),
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def _drop_schema() -> Iterator[None]:
    yield
    if BACKEND != "sqlite":

        async def drop() -> None:
            conn = await asyncpg.connect(PG_URL)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{_schema_name}" CASCADE')
            await conn.close()

        asyncio.run(drop())


@schema.parametrize()
# Hypothesis warns when the global `random` state moves while it draws a case. Here it is moved by
# other threads (client libraries' retry jitter, left from earlier tests) at arbitrary moments, which
# made this test fail now and then on a case that passed when replayed; draws are derandomized anyway.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@settings(
    max_examples=15,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {ADMIN}"},
        checks=[not_a_server_error, response_schema_conformance],
    )
