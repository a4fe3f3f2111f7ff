"""LoRA federations: the share of each block's mean adapter product that re-factorising to the
federation's rank discarded (round_blocks.lora_discarded), and the rank each worker trains
(workers.lora_rank)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("round_blocks") as batch:
        batch.add_column(sa.Column("lora_discarded", sa.Float(), nullable=True))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("lora_rank", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("lora_rank")
    with op.batch_alter_table("round_blocks") as batch:
        batch.drop_column("lora_discarded")
