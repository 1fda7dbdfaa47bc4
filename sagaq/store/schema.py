"""The two tables that hold the truth about every saga: `saga` and `saga_step`.

Times are epoch seconds (float): the same type on SQLite and PostgreSQL, sortable, cheap.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

Json = JSON().with_variant(JSONB(), "postgresql")

saga = Table(
    "saga",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("input", Json, nullable=False),
    Column("idempotency_key", String(200)),
    Column("failed_step", String(200)),
    Column("error", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("deadline_at", Float),
    Column("headers", Json),
    Column("parent_id", String(36)),
    UniqueConstraint("name", "idempotency_key", name="uq_saga_name_idempotency_key"),
    Index("ix_saga_created_at", "created_at"),
    Index("ix_saga_status_created_at", "status", "created_at"),
    Index("ix_saga_name_created_at", "name", "created_at"),
)

saga_step = Table(
    "saga_step",
    metadata,
    Column("saga_id", String(36), ForeignKey("saga.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("position", Integer, nullable=False),
    Column("status", String(24), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("result", Json),
    Column("data", Json),  # what the step wrote to ctx.data
    Column("error", Text),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("compensation_attempts", Integer, nullable=False, default=0),
    Column("compensation_error", Text),
    Column("compensation_started_at", Float),
    Column("compensated_at", Float),
    PrimaryKeyConstraint("saga_id", "name", name="pk_saga_step"),
)
