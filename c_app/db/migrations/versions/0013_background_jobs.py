"""background jobs: the rows a client polls (background_jobs), and on PostgreSQL procrastinate's schema

procrastinate (the job engine on PostgreSQL) keeps its queue in tables, types and functions of its
own; they are created here, by the start-up migration under its advisory lock, from the schema SQL of
the installed procrastinate (pinned to one minor version in pyproject.toml: a newer one ships SQL
migrations, which a later revision applies). SQLite has no procrastinate: nothing but the table.

Revision ID: 0013
Revises: 0012
"""

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.util import await_only

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_PROCRASTINATE_TABLES = ("procrastinate_events", "procrastinate_periodic_defers", "procrastinate_jobs")
_PROCRASTINATE_TYPES = (
    "procrastinate_job_to_defer_v1",
    "procrastinate_job_event_type",
    "procrastinate_job_status",
)


def upgrade() -> None:
    op.create_table(
        "background_jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_background_jobs")),
    )
    op.create_index(op.f("ix_background_jobs_status"), "background_jobs", ["status"])
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        from procrastinate.schema import SchemaManager

        # Many statements and $$-quoted functions: sent as one simple query on the migration's own
        # connection (so in its transaction, under its lock), not as a prepared statement.
        raw: Any = bind.connection.driver_connection
        await_only(raw.execute(SchemaManager.get_schema()))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in (*_PROCRASTINATE_TABLES, "procrastinate_workers"):
            op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        functions: list[str] = list(
            bind.execute(
                sa.text(
                    "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                    "WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate%'"
                )
            ).scalars()
        )
        for signature in functions:
            op.execute(f"DROP FUNCTION IF EXISTS {signature} CASCADE")
        for type_name in _PROCRASTINATE_TYPES:
            op.execute(f"DROP TYPE IF EXISTS {type_name} CASCADE")
    op.drop_index(op.f("ix_background_jobs_status"), table_name="background_jobs")
    op.drop_table("background_jobs")
