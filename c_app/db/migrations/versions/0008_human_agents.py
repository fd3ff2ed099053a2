"""human agents (issue 10): presence, hand-offs (queue, assignment, CSAT), internal notes, the live
event log (Last-Event-ID resume), stop flags, and the agent who wrote a message

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("agent_id", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("agent_name", sa.String(length=100), nullable=True))
    op.create_table(
        "agents",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
    )
    op.create_table(
        "handoffs",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(length=128), nullable=False),
        sa.Column("open_session", sa.String(length=128), nullable=True),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=True),
        sa.Column("last_question", sa.Text(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("rating_comment", sa.Text(), nullable=True),
        sa.Column("rated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["chat_sessions.id"],
            name=op.f("fk_handoffs_session_id_chat_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handoffs")),
        sa.UniqueConstraint("open_session", name=op.f("uq_handoffs_open_session")),
    )
    op.create_index("ix_handoffs_status_created_at", "handoffs", ["status", "created_at"])
    op.create_index("ix_handoffs_session_id_id", "handoffs", ["session_id", "id"])
    op.create_index("ix_handoffs_agent_id_status", "handoffs", ["agent_id", "status"])
    op.create_index("ix_handoffs_closed_at", "handoffs", ["closed_at"])
    op.create_table(
        "handoff_notes",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("handoff_id", sa.BigInteger(), nullable=False),
        sa.Column("session_id", sa.String(length=128), nullable=False),
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("agent_name", sa.String(length=100), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["handoff_id"],
            ["handoffs.id"],
            name=op.f("fk_handoff_notes_handoff_id_handoffs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handoff_notes")),
    )
    op.create_index("ix_handoff_notes_handoff_id", "handoff_notes", ["handoff_id", "id"])
    op.create_table(
        "live_events",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=200), nullable=False),
        sa.Column("session_id", sa.String(length=128), nullable=True),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_live_events")),
    )
    op.create_index("ix_live_events_channel_id", "live_events", ["channel", "id"])
    op.create_index("ix_live_events_created_at", "live_events", ["created_at"])
    op.create_index("ix_live_events_session_id", "live_events", ["session_id"])
    op.create_table(
        "stop_requests",
        sa.Column("session_id", sa.String(length=128), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_stop_requests")),
    )


def downgrade() -> None:
    op.drop_table("stop_requests")
    op.drop_table("live_events")
    op.drop_table("handoff_notes")
    op.drop_table("handoffs")
    op.drop_table("agents")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("agent_name")
        batch.drop_column("agent_id")
