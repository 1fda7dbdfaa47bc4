"""The two tables that hold the truth about every saga: `saga` and `saga_step`.

Times are epoch seconds (float): the same type on SQLite and PostgreSQL, sortable, cheap.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
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
# The PostgreSQL advisory lock held while the schema is created or upgraded (by the store when
# it starts, and by `sagaq db upgrade`), so that two processes never change it at once.
SCHEMA_LOCK = 7400111

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
    Column("parent_step", String(200)),  # the parent's step that runs this saga as a sub-saga
    # Forward steps not yet COMPLETED or SKIPPED: the completion that brings it to 0 finishes the
    # saga (a counter, because parallel last steps committing at once cannot see each other).
    Column("steps_left", Integer, nullable=False, default=0, server_default="0"),
    # Why compensation began: "failure", "cancel" or "deadline" (None while it has not).
    Column("cause", String(16)),
    UniqueConstraint("name", "idempotency_key", name="uq_saga_name_idempotency_key"),
    Index("ix_saga_created_at", "created_at"),
    Index("ix_saga_status_created_at", "status", "created_at"),
    Index("ix_saga_name_created_at", "name", "created_at"),
    Index("ix_saga_parent", "parent_id", "parent_step"),  # a parent step finds its sub-sagas
    # Finding a saga by its business key across saga names (the unique key leads with name).
    Index("ix_saga_idempotency_key", "idempotency_key"),
    # Counts per status of one saga name, and its newest-first pages.
    Index("ix_saga_name_status_created_at", "name", "status", "created_at"),
    # Id-prefix search (`id LIKE 'ab12%'`): the primary key serves it only under the C
    # collation; pattern ops serve it under any. (On SQLite, a plain index, the same everywhere.)
    Index("ix_saga_id_prefix", "id", postgresql_ops={"id": "varchar_pattern_ops"}),
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
    # The attempt that holds the step (its Celery task id) and the last sign of life from it:
    # a duplicate never touches an attempt whose lease (heartbeat) is alive.
    Column("task_id", String(64)),
    Column("heartbeat_at", Float),
    # The retry (or poll) this attempt scheduled for itself: only that message may resume it.
    Column("resume_token", String(80)),
    # The step failed but its effect may have happened (worker lost, timeout, unserializable
    # result): it is compensated all the same.
    Column("applied", Boolean, nullable=False, default=False),
    # The step has a compensation to run (frozen from the plan when the saga is created).
    Column("undoable", Boolean, nullable=False, default=False),
    PrimaryKeyConstraint("saga_id", "name", name="pk_saga_step"),
)

# Append-only history: every transition, every attempt, sweeper and operator actions. Written in
# the same transaction (or statement) as the change it records.
saga_event = Table(
    "saga_event",
    metadata,
    Column("id", Integer().with_variant(BigInteger(), "postgresql"), primary_key=True),
    Column("saga_id", String(36), ForeignKey("saga.id", ondelete="CASCADE"), nullable=False),
    Column("at", Float, nullable=False),
    # "saga" (status change), "step" (forward), "compensation", "attempt", "sweeper", "operator"
    Column("kind", String(16), nullable=False),
    Column("step", String(200)),
    Column("status", String(24)),  # the status entered, when the event is a transition
    Column("attempt", Integer),
    Column("worker", String(200)),  # the worker's hostname
    Column("task_id", String(64)),
    Column("error", Text),
    Column("duration_ms", Float),
    Column("actor", String(200)),  # who (operator actions: the API token's name, or "cli")
    Column("reason", Text),
    Index("ix_saga_event_saga_id_id", "saga_id", "id"),
)
