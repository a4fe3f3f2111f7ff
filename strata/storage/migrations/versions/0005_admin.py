"""Administration: worker tokens issued through the API (worker_tokens) and the state an administrator
asked for (federations.desired_state)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("federations") as batch:
        batch.add_column(sa.Column("desired_state", sa.String(length=16), nullable=True))
    op.create_table(
        "worker_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["federation_id"],
            ["federations.id"],
            name=op.f("fk_worker_tokens_federation_id_federations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_worker_tokens_token_hash")),
    )
    with op.batch_alter_table("worker_tokens") as batch:
        batch.create_index(batch.f("ix_worker_tokens_federation_id"), ["federation_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("worker_tokens") as batch:
        batch.drop_index(batch.f("ix_worker_tokens_federation_id"))
    op.drop_table("worker_tokens")
    with op.batch_alter_table("federations") as batch:
        batch.drop_column("desired_state")
