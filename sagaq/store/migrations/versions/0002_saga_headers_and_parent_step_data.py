"""Saga headers and parent saga; data a step keeps beside its result.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("saga") as batch:
        batch.add_column(sa.Column("headers", Json))
        batch.add_column(sa.Column("parent_id", sa.String(36)))
    with op.batch_alter_table("saga_step") as batch:
        batch.add_column(sa.Column("data", Json))


def downgrade() -> None:
    with op.batch_alter_table("saga_step") as batch:
        batch.drop_column("data")
    with op.batch_alter_table("saga") as batch:
        batch.drop_column("parent_id")
        batch.drop_column("headers")
