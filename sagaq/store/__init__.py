"""The saga store: SQLAlchemy Core tables and the SagaStore that guards every transition."""

from sagaq.store.store import Claim, SagaRecord, SagaStore, StepClaim, StepRecord

__all__ = ["Claim", "SagaRecord", "SagaStore", "StepClaim", "StepRecord"]
