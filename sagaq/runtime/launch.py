"""Starting a saga: record it (one transaction), then publish its canvas. Used by
SagaQ.start and by sub-saga steps."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sagaq.compiler import compile_compensation, compile_saga
from sagaq.definition.saga import FailurePolicy, Saga
from sagaq.errors import BrokerUnavailableError
from sagaq.observability.events import EventType
from sagaq.runtime.base import Runtime, publish
from sagaq.status import SagaStatus
from sagaq.store.base import ACTIVE

log = logging.getLogger("sagaq")


def start_saga(
    rt: Runtime,
    saga: Saga,
    data: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    deadline: float | None = None,
    headers: dict[str, str] | None = None,
    parent_id: str | None = None,
) -> tuple[str, bool]:
    """Returns (saga id, created). Commit first, publish second: a publish lost after the
    commit is found by the sweeper. A broker that refuses the publish removes the saga again."""
    saga_id = str(uuid.uuid4())
    deadline = deadline if deadline is not None else saga.deadline
    headers = {"correlation_id": idempotency_key or saga_id, **(headers or {})}
    saga_id, created = rt.store.create_saga(
        saga_id,
        saga.name,
        data,
        saga.order(),
        idempotency_key,
        deadline_at=time.time() + deadline if deadline is not None else None,
        headers=headers,
        parent_id=parent_id,
    )
    if created:
        try:
            publish(compile_saga(saga, saga_id, rt.app))
        except Exception as exc:
            # Whatever stopped the publish (broker down, a canvas Celery cannot encode...),
            # no half-started saga may stay behind for the sweeper to run later.
            rt.store.delete_saga(saga_id)
            if isinstance(exc, BrokerUnavailableError):
                raise BrokerUnavailableError(f"saga {saga.name!r} was not started: {exc}") from exc
            raise
        rt.store.mark_published(saga_id)
        rt.emit(EventType.SAGA_STARTED, saga_id, saga.name)
    return saga_id, created


def start_compensation(
    rt: Runtime,
    saga: Saga,
    saga_id: str,
    *,
    failed_step: str | None = None,
    reason: str | None = None,
    allowed: Sequence[SagaStatus] = ACTIVE,
) -> bool:
    """Move the saga to COMPENSATING (only one caller wins) and publish its undo canvas.
    `allowed=(COMPLETED,)` undoes a finished saga (a sub-saga whose parent is compensating)."""
    plan = rt.store.begin_compensation(
        saga_id,
        failed_step=failed_step,
        reason=reason,
        stop_running=saga.failure_policy is FailurePolicy.FAIL_FAST,
        allowed=allowed,
    )
    if plan is None:
        return False
    log.info("saga %s: compensating %s (%s)", saga_id, sorted(plan), reason or failed_step)
    publish(compile_compensation(saga, saga_id, plan, rt.app))
    return True
