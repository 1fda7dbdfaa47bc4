"""sagaq: sagas on Celery. Steps are Celery tasks, compensations run in reverse dependency
order, and the state of every saga lives in SQL."""

from sagaq.client import SagaHandle, SagaQ, SagaResult, StepResult
from sagaq.definition import FailurePolicy, Saga, Step, StepContext
from sagaq.definition.classes import compensation_step, saga, saga_of, saga_step
from sagaq.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    DefinitionError,
    IdempotencyConflictError,
    InvalidInputError,
    InvalidStateError,
    NonRetryableError,
    SagaNotFoundError,
    SagaqError,
    SagaTimeoutError,
    StepTimeoutError,
    StoreUnavailableError,
    UnknownSagaError,
    UnserializableResultError,
)
from sagaq.patterns import Capabilities, PatternChoice, choose_pattern
from sagaq.settings import Settings
from sagaq.status import SagaStatus, StepStatus
from sagaq.tcc import Tcc
from sagaq.verify import VerifyReport, assert_compensates_correctly, verify_saga

__all__ = [
    # defining sagas
    "FailurePolicy",
    "Saga",
    "Step",
    "StepContext",
    "Tcc",
    "compensation_step",
    "saga",
    "saga_of",
    "saga_step",
    # choosing and checking
    "Capabilities",
    "PatternChoice",
    "VerifyReport",
    "assert_compensates_correctly",
    "choose_pattern",
    "verify_saga",
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
    "ConfigurationError",
    "DefinitionError",
    "IdempotencyConflictError",
    "InvalidInputError",
    "InvalidStateError",
    "NonRetryableError",
    "SagaNotFoundError",
    "SagaTimeoutError",
    "SagaqError",
    "StepTimeoutError",
    "StoreUnavailableError",
    "UnknownSagaError",
    "UnserializableResultError",
]
