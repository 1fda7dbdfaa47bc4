"""Every error sagaq raises on purpose derives from SagaqError."""

from __future__ import annotations

from typing import Any


class SagaqError(Exception):
    """Raised for anything sagaq reports to its user; catch this to catch them all."""


class DefinitionError(SagaqError):
    """Raised when a saga definition is invalid (cycle, unknown dependency, duplicate step...)."""


class UnknownSagaError(SagaqError):
    """Raised when a saga name is not registered with the engine."""

    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"unknown saga {name!r} (registered sagas: {listed})")
        self.name = name


class InvalidInputError(SagaqError):
    """Raised when saga input does not match the saga's input model; nothing was written."""


class SagaNotFoundError(SagaqError):
    """Raised when no saga with the given id exists in the store."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(f"no saga with id {saga_id!r}")
        self.saga_id = saga_id


class InvalidStateError(SagaqError):
    """Raised when an operation does not apply to the saga's status (cancel a finished saga...)."""


class SagaTimeoutError(SagaqError):
    """Raised when waiting for a saga to finish takes longer than the given timeout."""


class StoreUnavailableError(SagaqError):
    """Raised when the saga store (database) cannot be reached."""


class BrokerUnavailableError(SagaqError):
    """Raised when the Celery broker cannot be reached while publishing a saga."""


class StepError(SagaqError):
    """Base for errors a step raises to steer sagaq's retry policy."""


class NonRetryableError(StepError):
    """Raised by a step to fail at once, without retries, and start compensation."""


class StepTimeoutError(StepError):
    """Raised when a step runs longer than its timeout. Its effect may have happened, so the
    step is compensated; `result` is what it returned in the end, if it did."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class UnserializableResultError(NonRetryableError):
    """Raised when a step returns a value that cannot be stored as JSON."""


class ConfigurationError(SagaqError):
    """Raised when the Celery app or sagaq's settings cannot run what was asked (a join with
    no shared result backend...); the message says what to set."""


class IdempotencyConflictError(SagaqError):
    """Raised when an idempotency key is reused with different input (HTTP 409)."""

    def __init__(self, key: str, saga_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used by saga {saga_id} with different input"
        )
        self.key = key
        self.saga_id = saga_id
