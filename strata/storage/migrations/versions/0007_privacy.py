"""Differential privacy: each round's mechanism and the ε spent after it (rounds.private, rounds.dp_*),
why a federation ended (federations.reason), and a worker's local DP-SGD guarantee
(workers.local_epsilon, workers.local_delta)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

DP_COLUMNS = (
    "dp_noise_multiplier",
    "dp_sampling_rate",
    "dp_expected",
    "dp_clip",
    "dp_next_clip",
    "dp_unclipped",
    "dp_epsilon",
)


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("private", sa.Boolean(), nullable=False, server_default=sa.false()))
        for name in DP_COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
    with op.batch_alter_table("federations") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("local_epsilon", sa.Float(), nullable=True))
        batch.add_column(sa.Column("local_delta", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("local_delta")
        batch.drop_column("local_epsilon")
    with op.batch_alter_table("federations") as batch:
        batch.drop_column("reason")
    with op.batch_alter_table("rounds") as batch:
        for name in reversed(DP_COLUMNS):
            batch.drop_column(name)
        batch.drop_column("private")
