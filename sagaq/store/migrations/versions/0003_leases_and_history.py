"""Attempt leases (task id, heartbeat), steps that may have applied, what compensation undoes,
the cause of compensation, sub-saga parent step, and the append-only saga_event history.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("saga") as batch:
        batch.add_column(sa.Column("parent_step", sa.String(200)))
        batch.add_column(sa.Column("cause", sa.String(16)))
        batch.add_column(sa.Column("steps_left", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("saga_step") as batch:
        batch.add_column(sa.Column("task_id", sa.String(64)))
        batch.add_column(sa.Column("heartbeat_at", sa.Float()))
        batch.add_column(sa.Column("resume_token", sa.String(80)))
        batch.add_column(
            sa.Column("applied", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("undoable", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("saga_step") as batch:  # defaults were only for existing rows
        batch.alter_column("applied", server_default=None)
        batch.alter_column("undoable", server_default=None)
    op.create_index("ix_saga_parent", "saga", ["parent_id", "parent_step"])
    op.create_table(
        "saga_event",
        sa.Column(
            "id",
            sa.Integer().with_variant(sa.BigInteger(), "postgresql"),
            primary_key=True,
        ),
        sa.Column(
            "saga_id",
            sa.String(36),
            sa.ForeignKey("saga.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("step", sa.String(200)),
        sa.Column("status", sa.String(24)),
        sa.Column("attempt", sa.Integer()),
        sa.Column("worker", sa.String(200)),
        sa.Column("task_id", sa.String(64)),
        sa.Column("error", sa.Text()),
        sa.Column("duration_ms", sa.Float()),
        sa.Column("actor", sa.String(200)),
        sa.Column("reason", sa.Text()),
    )
    op.create_index("ix_saga_event_saga_id_id", "saga_event", ["saga_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_saga_event_saga_id_id", table_name="saga_event")
    op.drop_table("saga_event")
    op.drop_index("ix_saga_parent", table_name="saga")
    with op.batch_alter_table("saga_step") as batch:
        for column in ("undoable", "applied", "resume_token", "heartbeat_at", "task_id"):
            batch.drop_column(column)
    with op.batch_alter_table("saga") as batch:
        batch.drop_column("steps_left")
        batch.drop_column("cause")
        batch.drop_column("parent_step")
