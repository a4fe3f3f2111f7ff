"""Targeted layer updates: the blocks each round trained (rounds.blocks, rounds.probe) and every block's
outcome and scores per completed round (round_blocks)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("blocks", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("probe", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "round_blocks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("block", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("trained", sa.Boolean(), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("fresh", sa.Boolean(), nullable=False),
        sa.Column("fedtlu", sa.Float(), nullable=True),
        sa.Column("agreement", sa.Float(), nullable=True),
        sa.Column("update_norm", sa.Float(), nullable=True),
        sa.Column("relative", sa.Float(), nullable=True),
        sa.Column("consensus", sa.Float(), nullable=True),
        sa.Column("num_elements", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["round_id"], ["rounds.id"], name=op.f("fk_round_blocks_round_id_rounds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_round_blocks")),
        sa.UniqueConstraint("round_id", "block", name=op.f("uq_round_blocks_round_id")),
    )
    with op.batch_alter_table("round_blocks") as batch:
        batch.create_index(batch.f("ix_round_blocks_round_id"), ["round_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("round_blocks") as batch:
        batch.drop_index(batch.f("ix_round_blocks_round_id"))
    op.drop_table("round_blocks")
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("probe")
        batch.drop_column("blocks")
