"""Saga definitions: pure Python and pydantic, no Celery, no store."""

from sagaq.definition.saga import (
    MAX_NAME_LENGTH,
    MAX_STEPS,
    FailurePolicy,
    Saga,
    Step,
    StepContext,
)

__all__ = ["MAX_NAME_LENGTH", "MAX_STEPS", "FailurePolicy", "Saga", "Step", "StepContext"]
