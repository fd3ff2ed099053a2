"""stored analysed terms on memories, and index snapshots for replicas to start from

memories.tokens holds a row's analysed terms (fixed-size records, c_app/retrieval/stored.py), so a user's private and chat memories are
ranked per request from their rows without re-analysis; NULL rows (all existing ones) are analysed
lazily on their first search and written back. index_snapshots holds the knowledge-base index as
plain arrays with the change-log sequence number it covers.

Revision ID: 0012
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("memories") as batch:
        batch.add_column(sa.Column("tokens", sa.LargeBinary(), nullable=True))
    op.create_table(
        "index_snapshots",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("lease", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_index_snapshots")),
    )


def downgrade() -> None:
    op.drop_table("index_snapshots")
    with op.batch_alter_table("memories") as batch:
        batch.drop_column("tokens")
