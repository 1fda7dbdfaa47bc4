"""sagaq: sagas on Celery. Steps are Celery tasks, compensations run in reverse dependency
order, and the state of every saga lives in SQL."""

from sagaq.client import SagaHandle, SagaQ, SagaResult, StepResult
from sagaq.definition import Saga, Step, StepContext
from sagaq.errors import (
    BrokerUnavailableError,
    DefinitionError,
    InvalidInputError,
    NonRetryableError,
    SagaNotFoundError,
    SagaqError,
    SagaTimeoutError,
    StepTimeoutError,
    StoreUnavailableError,
    UnknownSagaError,
    UnserializableResultError,
)
from sagaq.settings import Settings
from sagaq.status import SagaStatus, StepStatus

__all__ = [
    # defining sagas
    "Saga",
    "Step",
    "StepContext",
    # running them
    "SagaHandle",
    "SagaQ",
    "SagaResult",
    "SagaStatus",
    "Settings",
    "StepResult",
    "StepStatus",
    # errors
    "BrokerUnavailableError",
    "DefinitionError",
    "InvalidInputError",
    "NonRetryableError",
    "SagaNotFoundError",
    "SagaTimeoutError",
    "SagaqError",
    "StepTimeoutError",
    "StoreUnavailableError",
    "UnknownSagaError",
    "UnserializableResultError",
]
