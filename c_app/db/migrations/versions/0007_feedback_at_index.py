"""indexes for the operator console's charts: answers per day and outcome, ratings per day

Both cover their query (index-only on PostgreSQL once vacuumed, a covering index on SQLite):
ix_messages_role_created_outcome serves answers per day and per outcome (it starts like
ix_messages_role_created_at, which stays for the other readers), ix_messages_feedback_at the
ratings per day (messages had no index on feedback_at: the chart read the whole table).

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_role_created_outcome", "messages", ["role", "created_at", "outcome"])
    op.create_index("ix_messages_feedback_at", "messages", ["feedback_at", "feedback"])


def downgrade() -> None:
    op.drop_index("ix_messages_feedback_at", table_name="messages")
    op.drop_index("ix_messages_role_created_outcome", table_name="messages")
