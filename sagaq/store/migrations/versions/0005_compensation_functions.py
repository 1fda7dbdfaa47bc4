"""PostgreSQL: the two functions the compensation fast path calls (each takes the saga's row
lock, then claims or completes a compensation, in one round trip). Nothing on SQLite.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

from sagaq.store.pg_statements import FUNCTIONS

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for function in FUNCTIONS:
            conn.exec_driver_sql(function.ddl)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        for function in FUNCTIONS:
            conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {function.name}")
