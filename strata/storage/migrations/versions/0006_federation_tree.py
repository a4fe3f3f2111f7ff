"""Federations of federations: members that are federations (workers.members, workers.inner_rounds),
the parent rounds a sub-federation served (parent_rounds), and the attention weights of key blocks
(key_weights)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("members", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("inner_rounds", sa.Integer(), nullable=True))
    op.create_table(
        "parent_rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sa.Integer(), nullable=False),
        sa.Column("parent_round", sa.Integer(), nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=False),
        sa.Column("parent_hash", sa.String(length=64), nullable=False),
        sa.Column("start_version", sa.Integer(), nullable=False),
        sa.Column("rounds_before", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("num_samples", sa.BigInteger(), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["federation_id"],
            ["federations.id"],
            name=op.f("fk_parent_rounds_federation_id_federations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_parent_rounds")),
        sa.UniqueConstraint("federation_id", "parent_round", name=op.f("uq_parent_rounds_federation_id")),
    )
    with op.batch_alter_table("parent_rounds") as batch:
        batch.create_index(batch.f("ix_parent_rounds_federation_id"), ["federation_id"], unique=False)
    op.create_table(
        "key_weights",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("update_id", sa.Integer(), nullable=False),
        sa.Column("block", sa.String(length=64), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("cosine", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["round_id"], ["rounds.id"], name=op.f("fk_key_weights_round_id_rounds"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["update_id"], ["updates.id"], name=op.f("fk_key_weights_update_id_updates"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_weights")),
        sa.UniqueConstraint("update_id", "block", name=op.f("uq_key_weights_update_id")),
    )
    with op.batch_alter_table("key_weights") as batch:
        batch.create_index(batch.f("ix_key_weights_round_id"), ["round_id"], unique=False)
        batch.create_index(batch.f("ix_key_weights_update_id"), ["update_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("key_weights") as batch:
        batch.drop_index(batch.f("ix_key_weights_update_id"))
        batch.drop_index(batch.f("ix_key_weights_round_id"))
    op.drop_table("key_weights")
    with op.batch_alter_table("parent_rounds") as batch:
        batch.drop_index(batch.f("ix_parent_rounds_federation_id"))
    op.drop_table("parent_rounds")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("inner_rounds")
        batch.drop_column("members")
