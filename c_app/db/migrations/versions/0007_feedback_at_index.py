"""an index on messages.feedback_at, for the console's ratings per day

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_messages_feedback_at", "messages", ["feedback_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_feedback_at", table_name="messages")
