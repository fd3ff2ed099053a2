"""what the knowledge-base decision did with each answer: its best score, the entries a clarified answer
offered, and the entry the customer then chose

messages.score is the best knowledge-base score of the turn; messages.choices the entry ids a clarified
answer offered (best first); messages.chosen_entry_id, set on that clarified answer when the customer
picks one of them (a click or its number), records the pair (the question before it -> the chosen entry),
which the knowledge gaps pre-select.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("score", sa.Float(), nullable=True))
        batch.add_column(sa.Column("choices", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("chosen_entry_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("chosen_entry_id")
        batch.drop_column("choices")
        batch.drop_column("score")
