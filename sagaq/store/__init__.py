"""The saga store: SQLAlchemy Core tables and the SagaStore that guards every transition."""

from sagaq.store.records import Claim, SagaRecord, StepClaim, StepRecord
from sagaq.store.store import SagaStore

__all__ = ["Claim", "SagaRecord", "SagaStore", "StepClaim", "StepRecord"]
