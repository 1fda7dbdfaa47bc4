"""The SQL of PostgreSQL's fast path (postgres.py): each a single statement - data-modifying
CTEs carry the history row and the saga's finish - with the same conditions as the portable
transactions in store.py and compensation.py, whose statuses and groups it takes from the
transition table (sagaq.status)."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from sagaq.status import (
    SAGA_ACTIVE,
    STEP_BLOCKS_COMPENSATED,
    STEP_DONE,
    SagaStatus,
    StepStatus,
)
from sagaq.store.notify import CHANNEL

S, T = SagaStatus, StepStatus


def _in(values: Any) -> str:
    return "(" + ", ".join(f"'{v}'" for v in sorted(values)) + ")"


ACTIVE, DONE = _in(SAGA_ACTIVE), _in(STEP_DONE)

CREATE = f"""
WITH created AS (
    INSERT INTO saga (id, name, status, input, idempotency_key, deadline_at, headers, parent_id,
                      parent_step, steps_left, created_at, updated_at)
    VALUES (%(sid)s, %(name)s, '{S.RUNNING}', %(input)s, %(key)s, %(deadline)s, %(headers)s,
            %(parent)s, %(parent_step)s, cardinality(%(steps)s::text[]), %(now)s, %(now)s)
    ON CONFLICT (name, idempotency_key) DO NOTHING
    RETURNING id
), steps AS (
    INSERT INTO saga_step (saga_id, name, position, status, attempts, compensation_attempts,
                           applied, undoable)
    SELECT c.id, s.name, s.position - 1, '{T.PENDING}', 0, 0, false,
           s.name = ANY(%(undoable)s::text[])
    FROM created c, unnest(%(steps)s::text[]) WITH ORDINALITY AS s(name, position)
), logged AS (
    INSERT INTO saga_event (saga_id, at, kind, status)
    SELECT id, %(now)s, 'saga', '{S.RUNNING}' FROM created
)
SELECT id FROM created
"""

# What a claim returns besides its own columns: the saga's input and headers, and the rows of
# the steps it wants (its ancestors' results and data), as the portable STEP_INPUTS reads them.
_WITH_INPUTS = """JOIN saga s ON s.id = %(sid)s
LEFT JOIN saga_step st ON st.saga_id = s.id AND st.name = ANY(%(wanted)s::text[])
ORDER BY st.position
"""

# A claim need not be durable: it commits with synchronous_commit off, set for its own
# (autocommit) transaction only, so the session - or a PgBouncer server connection - keeps it on.
CLAIM = f"""
WITH not_durable AS (
    SELECT set_config('synchronous_commit', 'off', true)
), old AS (
    SELECT status = '{T.RUNNING}' AND resume_token = %(token)s AS resumed
    FROM saga_step WHERE saga_id = %(sid)s AND name = %(step)s
    FOR UPDATE
), claimed AS (
    UPDATE saga_step SET
        status = '{T.RUNNING}',
        attempts = attempts + CASE WHEN (SELECT resumed FROM old) THEN 0 ELSE 1 END,
        task_id = %(task_id)s,
        resume_token = NULL,
        heartbeat_at = %(now)s,
        started_at = COALESCE(started_at, %(now)s)
    WHERE saga_id = %(sid)s AND name = %(step)s
      AND (status = '{T.PENDING}'
           OR (status = '{T.RUNNING}'
               AND (heartbeat_at <= %(expired)s OR resume_token = %(token)s)))
      AND EXISTS (SELECT 1 FROM saga WHERE id = %(sid)s AND status IN {ACTIVE}
                  AND (%(past_pivot)s OR deadline_at IS NULL OR deadline_at > %(now)s))
      AND NOT EXISTS (SELECT 1 FROM saga_step d
                      WHERE d.saga_id = %(sid)s AND d.name = ANY(%(deps)s::text[])
                        AND d.status NOT IN {DONE})
    RETURNING attempts
), logged AS (
    INSERT INTO saga_event (saga_id, at, kind, step, status, attempt, worker, task_id)
    SELECT %(sid)s, %(now)s, 'step', %(step)s, '{T.RUNNING}', attempts, %(worker)s, %(task_id)s
    FROM claimed WHERE NOT (SELECT resumed FROM old)
)
SELECT c.attempts, (SELECT resumed FROM old) AS resumed, s.input, s.headers,
       st.name, st.status, st.result, st.data
FROM claimed c
CROSS JOIN not_durable
{_WITH_INPUTS}"""

COMPLETE = f"""
WITH done AS (
    UPDATE saga_step SET status = %(status)s, result = %(result)s, data = %(data)s,
                         finished_at = %(now)s
    WHERE saga_id = %(sid)s AND name = %(step)s AND status = '{T.RUNNING}'
      AND attempts = %(attempt)s
    RETURNING saga_id
), logged AS (
    INSERT INTO saga_event (saga_id, at, kind, step, status, attempt, duration_ms, worker,
                            task_id)
    SELECT saga_id, %(now)s, 'step', %(step)s, %(status)s, %(attempt)s, %(duration)s,
           %(worker)s, %(task_id)s
    FROM done
), counted AS (
    UPDATE saga SET
        steps_left = steps_left - 1,
        status = CASE WHEN steps_left = 1 AND status IN {ACTIVE}
                      THEN '{S.COMPLETED}' ELSE status END,
        finished_at = CASE WHEN steps_left = 1 AND status IN {ACTIVE}
                           THEN %(now)s ELSE finished_at END,
        updated_at = CASE WHEN steps_left = 1 AND status IN {ACTIVE}
                          THEN %(now)s ELSE updated_at END
    WHERE id = %(sid)s AND EXISTS (SELECT 1 FROM done)
    RETURNING status, steps_left, created_at
), finished AS (
    INSERT INTO saga_event (saga_id, at, kind, status, duration_ms)
    SELECT %(sid)s, %(now)s, 'saga', '{S.COMPLETED}',
           round(((%(now)s - created_at) * 1000)::numeric, 3)
    FROM counted WHERE steps_left = 0 AND status = '{S.COMPLETED}'
)
SELECT (SELECT count(*) FROM done),
       (SELECT count(pg_notify('{CHANNEL}', %(sid)s)) FROM counted
        WHERE steps_left = 0 AND status = '{S.COMPLETED}')
"""


_UNSETTLED = f"""(d.status IN {_in(STEP_BLOCKS_COMPENSATED)}
          OR (d.undoable AND (d.status = '{T.COMPLETED}'
                              OR (d.status = '{T.FAILED}' AND d.applied))))"""

_CLAIM_UNDO = f"""
WITH claimed AS (
    UPDATE saga_step SET
        status = '{T.COMPENSATING}',
        compensation_attempts = compensation_attempts + 1,
        compensation_started_at = COALESCE(compensation_started_at, %(now)s),
        heartbeat_at = %(now)s, task_id = %(task_id)s, resume_token = NULL
    WHERE saga_id = %(sid)s AND name = %(step)s AND undoable
      AND (status = '{T.COMPLETED}' OR (status = '{T.FAILED}' AND applied)
           OR (status = '{T.COMPENSATING}'
               AND (heartbeat_at <= %(expired)s OR resume_token = %(token)s)))
      AND EXISTS (SELECT 1 FROM saga WHERE id = %(sid)s AND status = '{S.COMPENSATING}')
      AND NOT EXISTS (SELECT 1 FROM saga_step d
                      WHERE d.saga_id = %(sid)s AND d.name = ANY(%(dependents)s::text[])
                        AND {_UNSETTLED})
    RETURNING compensation_attempts, result
), logged AS (
    INSERT INTO saga_event (saga_id, at, kind, step, status, attempt, worker, task_id)
    SELECT %(sid)s, %(now)s, 'compensation', %(step)s, '{T.COMPENSATING}',
           compensation_attempts, %(worker)s, %(task_id)s
    FROM claimed
)
SELECT c.compensation_attempts AS attempts, c.result AS undo_result, s.input, s.headers,
       st.name, st.status, st.result, st.data
FROM claimed c
{_WITH_INPUTS}"""

_COMPLETE_UNDO = f"""
WITH done AS (
    UPDATE saga_step SET status = '{T.COMPENSATED}', compensated_at = %(now)s
    WHERE saga_id = %(sid)s AND name = %(step)s AND status = '{T.COMPENSATING}'
      AND compensation_attempts = %(attempt)s
    RETURNING saga_id
), logged AS (
    INSERT INTO saga_event (saga_id, at, kind, step, status, attempt, duration_ms, worker)
    SELECT saga_id, %(now)s, 'compensation', %(step)s, '{T.COMPENSATED}', %(attempt)s,
           %(duration)s, %(worker)s
    FROM done
), finished AS (
    UPDATE saga SET status = '{S.COMPENSATED}', updated_at = %(now)s, finished_at = %(now)s
    WHERE id = %(sid)s AND status = '{S.COMPENSATING}' AND EXISTS (SELECT 1 FROM done)
      AND NOT EXISTS (SELECT 1 FROM saga_step d
                      WHERE d.saga_id = %(sid)s AND d.name <> %(step)s AND {_UNSETTLED})
    RETURNING created_at
), logged_finish AS (
    INSERT INTO saga_event (saga_id, at, kind, status, duration_ms)
    SELECT %(sid)s, %(now)s, 'saga', '{S.COMPENSATED}',
           round(((%(now)s - created_at) * 1000)::numeric, 3)
    FROM finished
)
SELECT (SELECT count(*) FROM done),
       (SELECT count(pg_notify('{CHANNEL}', %(sid)s)) FROM finished)
"""


class Function(NamedTuple):
    """A function the store installs in the database."""

    name: str
    source: str  # its body, as pg_proc.prosrc holds it
    ddl: str


def _locked(
    name: str, args: dict[str, str], returns: str, statement: str, *, durable: bool = True
) -> tuple[Function, str]:
    """`statement` as a PL/pgSQL function that takes the saga's row lock first: in READ
    COMMITTED each statement inside a function takes a fresh snapshot, so the statement sees
    whatever the previous holder of the lock committed (two last compensations finishing at once
    cannot each miss the other), in one round trip and one autocommit transaction. Returns the
    function and the statement that calls it; its arguments are the statement's parameters,
    `%(x)s` becoming `p_x`, cast to `args`' types. Not `durable`: its transaction commits with
    synchronous_commit off, as CLAIM does."""
    body = re.sub(r"%\((\w+)\)s", r"p_\1", statement)
    not_durable = "" if durable else "\n    PERFORM set_config('synchronous_commit', 'off', true);"
    source = f"""
#variable_conflict use_column
BEGIN{not_durable}
    PERFORM 1 FROM saga WHERE id = p_sid FOR UPDATE;
    RETURN QUERY {body};
END
"""
    signature = ", ".join(f"p_{arg} {type_}" for arg, type_ in args.items())
    ddl = (
        f"CREATE OR REPLACE FUNCTION {name}({signature}) RETURNS TABLE ({returns})\n"
        f"LANGUAGE plpgsql AS $fn${source}$fn$"
    )
    call = ", ".join(f"%({arg})s::{type_}" for arg, type_ in args.items())
    return Function(name, source, ddl), f"SELECT * FROM {name}({call})"


_CLAIM_UNDO_FN, CLAIM_UNDO = _locked(
    "sagaq_claim_compensation",
    {
        "sid": "text",
        "step": "text",
        "token": "text",
        "task_id": "text",
        "now": "float8",
        "expired": "float8",
        "dependents": "text[]",
        "wanted": "text[]",
        "worker": "text",
    },
    "attempts integer, undo_result jsonb, input jsonb, headers jsonb, name varchar, "
    "status varchar, result jsonb, data jsonb",
    _CLAIM_UNDO,
    durable=False,  # like a step's claim: a claim lost in a crash is claimed again
)
_COMPLETE_UNDO_FN, COMPLETE_UNDO = _locked(
    "sagaq_complete_compensation",
    {
        "sid": "text",
        "step": "text",
        "attempt": "integer",
        "now": "float8",
        "duration": "float8",
        "worker": "text",
    },
    "done bigint, finished bigint",
    _COMPLETE_UNDO,
)
# Installed by migration 0005 (`sagaq db upgrade`), and by the store where missing or different
# (PostgresStore). A change to a function's body or signature needs a migration that installs it
# again (a worker whose role may not create functions relies on it).
FUNCTIONS = (_CLAIM_UNDO_FN, _COMPLETE_UNDO_FN)

# begin_compensation: the same transaction as the portable one (compensation.py).
BEGIN_UNDO = f"""
UPDATE saga SET status = '{S.COMPENSATING}', cause = %(cause)s, updated_at = %(now)s,
                finished_at = NULL
WHERE id = %(sid)s AND status = ANY(%(allowed)s::text[])
  AND NOT EXISTS (SELECT 1 FROM saga_step
                  WHERE saga_id = %(sid)s AND name = %(pivot)s
                    AND status IN ('{T.RUNNING}', '{T.COMPLETED}'))
  AND (NOT %(only_if_failed)s
       OR EXISTS (SELECT 1 FROM saga_step
                  WHERE saga_id = %(sid)s AND name = %(failed_step)s AND status = '{T.FAILED}'))
RETURNING id
"""
SAGA_STATUS = "SELECT status FROM saga WHERE id = %(sid)s"
# Sent in the same pipeline as BEGIN_UNDO, before its outcome is known: a caller that did not
# win rolls the transaction back (and skips nothing while the saga is not compensating).
SKIP_PENDING = f"""
UPDATE saga_step SET status = '{T.SKIPPED}' WHERE saga_id = %(sid)s AND status = '{T.PENDING}'
  AND EXISTS (SELECT 1 FROM saga WHERE id = %(sid)s AND status = '{S.COMPENSATING}')
"""
STEP_ROWS = """
SELECT name, status, error, undoable, applied FROM saga_step WHERE saga_id = %(sid)s
ORDER BY finished_at NULLS FIRST, position
"""
RECORD_CAUSE = """
UPDATE saga SET failed_step = %(failed_step)s, error = %(error)s WHERE id = %(sid)s
"""
LOG_BEGIN = f"""
INSERT INTO saga_event (saga_id, at, kind, status, actor, reason, error)
SELECT %(sid)s, %(now)s, 'operator', 'CANCEL', %(actor)s, %(reason)s, NULL WHERE %(operator)s
UNION ALL
SELECT %(sid)s, %(now)s, 'saga', '{S.COMPENSATING}', NULL, %(cause)s, %(error)s
"""


FAIL = f"""
WITH done AS (
    UPDATE saga_step SET status = '{T.FAILED}', error = %(error)s, applied = %(applied)s,
                         result = %(result)s, finished_at = %(now)s
    WHERE saga_id = %(sid)s AND name = %(step)s AND status = '{T.RUNNING}'
      AND attempts = %(attempt)s
    RETURNING saga_id
), logged AS (
    INSERT INTO saga_event (saga_id, at, kind, step, status, attempt, error, worker, task_id)
    SELECT saga_id, %(now)s, 'step', %(step)s, '{T.FAILED}', %(attempt)s, %(error)s,
           %(worker)s, %(task_id)s
    FROM done
), gave_up AS (
    UPDATE saga SET status = '{S.FAILED}', failed_step = %(step)s, error = %(message)s,
                    updated_at = %(now)s, finished_at = %(now)s
    WHERE %(forward)s AND id = %(sid)s AND status IN {ACTIVE} AND EXISTS (SELECT 1 FROM done)
    RETURNING id
), logged_saga AS (
    INSERT INTO saga_event (saga_id, at, kind, status, error)
    SELECT id, %(now)s, 'saga', '{S.FAILED}', %(message)s FROM gave_up
)
SELECT (SELECT count(*) FROM done),
       (SELECT count(pg_notify('{CHANNEL}', %(sid)s)) FROM gave_up),
       (SELECT status FROM saga WHERE id = %(sid)s)
"""
GET_SAGA = "SELECT * FROM saga WHERE id = %(sid)s"
GET_STEPS = "SELECT * FROM saga_step WHERE saga_id = %(sid)s ORDER BY position"
