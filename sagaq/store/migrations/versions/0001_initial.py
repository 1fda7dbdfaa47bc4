"""The saga and saga_step tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "saga",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input", Json, nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("failed_step", sa.String(200)),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float()),
        sa.Column("deadline_at", sa.Float()),
        sa.UniqueConstraint("name", "idempotency_key", name="uq_saga_name_idempotency_key"),
    )
    op.create_index("ix_saga_created_at", "saga", ["created_at"])
    op.create_index("ix_saga_status_created_at", "saga", ["status", "created_at"])
    op.create_index("ix_saga_name_created_at", "saga", ["name", "created_at"])
    op.create_table(
        "saga_step",
        sa.Column(
            "saga_id",
            sa.String(36),
            sa.ForeignKey("saga.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", Json),
        sa.Column("error", sa.Text()),
        sa.Column("started_at", sa.Float()),
        sa.Column("finished_at", sa.Float()),
        sa.Column("compensation_attempts", sa.Integer(), nullable=False),
        sa.Column("compensation_error", sa.Text()),
        sa.Column("compensation_started_at", sa.Float()),
        sa.Column("compensated_at", sa.Float()),
        sa.PrimaryKeyConstraint("saga_id", "name", name="pk_saga_step"),
    )


def downgrade() -> None:
    op.drop_table("saga_step")
    op.drop_index("ix_saga_name_created_at", table_name="saga")
    op.drop_index("ix_saga_status_created_at", table_name="saga")
    op.drop_index("ix_saga_created_at", table_name="saga")
    op.drop_table("saga")
