"""Indexes for the operator's console: search by idempotency key and id prefix, counts and
pages per saga name and status.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_saga_idempotency_key", "saga", ["idempotency_key"])
    op.create_index("ix_saga_name_status_created_at", "saga", ["name", "status", "created_at"])
    op.create_index(
        "ix_saga_id_prefix", "saga", ["id"], postgresql_ops={"id": "varchar_pattern_ops"}
    )


def downgrade() -> None:
    op.drop_index("ix_saga_id_prefix", table_name="saga")
    op.drop_index("ix_saga_name_status_created_at", table_name="saga")
    op.drop_index("ix_saga_idempotency_key", table_name="saga")
