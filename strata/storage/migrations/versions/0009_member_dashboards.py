"""Federations of federations: the dashboards' addresses that parent and member exchange when a member
joins, so each dashboard can link to the other: a member federation's own page (workers.dashboard_url)
and, at a sub-federation, its parent's (federations.parent_dashboard_url)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("dashboard_url", sa.String(length=512), nullable=True))
    with op.batch_alter_table("federations") as batch:
        batch.add_column(sa.Column("parent_dashboard_url", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("federations") as batch:
        batch.drop_column("parent_dashboard_url")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("dashboard_url")
