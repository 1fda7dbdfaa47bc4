"""Drive a saga through the store by hand, as the runtime would: for tests that need a saga in a
given state without running workers."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sagaq.store import Claim, SagaStore

LEASE = 30.0


def claim(store: SagaStore, saga_id: str, step: str, deps: Sequence[str] = ()) -> int:
    """Claim `step` as a fresh attempt; returns its attempt number."""
    got = store.claim_step(
        saga_id, step, deps=deps, wanted=deps, token=f"{uuid.uuid4()}#0", lease=LEASE
    )
    assert got.outcome is Claim.RUN, got
    return got.attempts


def complete(
    store: SagaStore, saga_id: str, step: str, result: Any, deps: Sequence[str] = ()
) -> None:
    attempt = claim(store, saga_id, step, deps)
    assert store.complete_step(saga_id, step, attempt, result)[0]


def fail(store: SagaStore, saga_id: str, step: str, error: str, deps: Sequence[str] = ()) -> None:
    attempt = claim(store, saga_id, step, deps)
    assert store.fail_step(saga_id, step, attempt, error)


def claim_undo(store: SagaStore, saga_id: str, step: str, dependents: Sequence[str] = ()) -> int:
    got = store.claim_compensation(
        saga_id, step, dependents=dependents, wanted=(), lease=LEASE, token=f"{uuid.uuid4()}#0"
    )
    assert got.outcome is Claim.RUN, got
    return got.attempts
