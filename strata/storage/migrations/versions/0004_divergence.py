"""Layer-wise divergence: per block (round_blocks), per tensor (round_tensors), per worker (update_alignments),
and the round's noise floor

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("noise_floor", sa.Float(), nullable=True))
    with op.batch_alter_table("round_blocks") as batch:
        for name in ("energy", "spread", "divergence", "cancelled"):
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
    op.create_table(
        "round_tensors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("tensor", sa.String(length=512), nullable=False),
        sa.Column("block", sa.String(length=64), nullable=False),
        sa.Column("num_elements", sa.BigInteger(), nullable=False),
        sa.Column("update_norm", sa.Float(), nullable=False),
        sa.Column("energy", sa.Float(), nullable=False),
        sa.Column("spread", sa.Float(), nullable=True),
        sa.Column("divergence", sa.Float(), nullable=True),
        sa.Column("cancelled", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["round_id"], ["rounds.id"], name=op.f("fk_round_tensors_round_id_rounds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_round_tensors")),
        sa.UniqueConstraint("round_id", "tensor", name=op.f("uq_round_tensors_round_id")),
    )
    with op.batch_alter_table("round_tensors") as batch:
        batch.create_index(batch.f("ix_round_tensors_round_id"), ["round_id"], unique=False)
    op.create_table(
        "update_alignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("update_id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("norm", sa.Float(), nullable=False),
        sa.Column("cosine", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["update_id"],
            ["updates.id"],
            name=op.f("fk_update_alignments_update_id_updates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_update_alignments")),
        sa.UniqueConstraint("update_id", "scope", "name", name=op.f("uq_update_alignments_update_id")),
    )
    with op.batch_alter_table("update_alignments") as batch:
        batch.create_index(batch.f("ix_update_alignments_update_id"), ["update_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("update_alignments") as batch:
        batch.drop_index(batch.f("ix_update_alignments_update_id"))
    op.drop_table("update_alignments")
    with op.batch_alter_table("round_tensors") as batch:
        batch.drop_index(batch.f("ix_round_tensors_round_id"))
    op.drop_table("round_tensors")
    with op.batch_alter_table("round_blocks") as batch:
        for name in ("cancelled", "divergence", "spread", "energy"):
            batch.drop_column(name)
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("noise_floor")
