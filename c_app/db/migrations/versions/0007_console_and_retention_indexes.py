"""indexes for the operator console's charts (answers per day and outcome, ratings per day) and for the retention purge

Both cover their query (index-only on PostgreSQL once vacuumed, a covering index on SQLite):
ix_messages_role_created_outcome serves answers per day, per outcome and per entry, ix_messages_feedback_at
the ratings per day (messages had no index on feedback_at: the chart read the whole table).
The retention purge finds what is older than its cut-off by the three time indexes.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_role_created_outcome", "messages", ["role", "created_at", "outcome", "entry_id"]
    )
    op.create_index("ix_messages_feedback_at", "messages", ["feedback_at", "feedback"])
    op.create_index("ix_chat_sessions_last_activity_at", "chat_sessions", ["last_activity_at"])
    op.create_index("ix_memories_scope_created_at", "memories", ["scope", "created_at"])
    op.create_index("ix_uploads_created_at", "uploads", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_uploads_created_at", table_name="uploads")
    op.drop_index("ix_memories_scope_created_at", table_name="memories")
    op.drop_index("ix_chat_sessions_last_activity_at", table_name="chat_sessions")
    op.drop_index("ix_messages_feedback_at", table_name="messages")
    op.drop_index("ix_messages_role_created_outcome", table_name="messages")
