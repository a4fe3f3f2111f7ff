"""rounds.raw_bytes_down: the fp32 size of what was sent downstream, for the ratio to fp32

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 10:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("raw_bytes_down", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("raw_bytes_down")
