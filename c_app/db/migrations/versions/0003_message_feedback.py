"""message feedback: a customer's like/dislike and comment on an answer

Revision ID: 0003
Revises: 0001

There is no 0002, on purpose. 0003 and 0004 were written side by side on 0001 (0004 was then put
after 0003 so there is one head), and no revision 0002 was ever released. Do not renumber to close
the gap: Alembic knows a database's state by the revision id stored in its alembic_version table
("0003", "0004"), not by file name, so renaming these ids would leave every deployed database at a
revision this code no longer has. New revisions continue from the head (0005, ...).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot alter tables in place beyond ADD COLUMN; batch covers both backends.
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("feedback", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("feedback_comment", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("feedback_at")
        batch_op.drop_column("feedback_comment")
        batch_op.drop_column("feedback")
