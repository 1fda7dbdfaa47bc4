"""Saga definitions: pure Python and pydantic, no Celery, no store."""

from sagaq.definition.saga import FailurePolicy, Saga, Step, StepContext

__all__ = ["FailurePolicy", "Saga", "Step", "StepContext"]
