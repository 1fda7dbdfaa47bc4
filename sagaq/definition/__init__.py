"""Saga definitions: pure Python and pydantic, no Celery, no store."""

from sagaq.definition.saga import Saga, Step, StepContext

__all__ = ["Saga", "Step", "StepContext"]
