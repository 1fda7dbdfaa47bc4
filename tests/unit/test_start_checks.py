"""What `start()` refuses before anything is written or sent, and what it refuses after: an
idempotency key reused with other input. Embedded engine (SQLite, memory broker), no worker:
a started saga stays PENDING/RUNNING, which is all these tests need."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, computed_field

from sagaq import DefinitionError, IdempotencyConflictError, InvalidInputError, Saga, SagaQ
from sagaq.embedded import embedded_app


class Payment(BaseModel):
    order_id: str


class Aliased(BaseModel):
    """Accepts `orderId` only: its dump (`order_id`) does not load back."""

    order_id: str = Field(alias="orderId")


class Priced(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cents: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def euros(self) -> float:
        return self.cents / 100


def _saga(name: str, model: type[BaseModel] | None) -> Saga:
    saga = Saga(name, input=model)
    saga.step(name="only")(lambda ctx: None)
    return saga


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[SagaQ]:
    built = SagaQ(embedded_app("start-checks"), store=f"sqlite:///{tmp_path / 's.db'}")
    built.register(
        _saga("pay", Payment),
        _saga("free", None),
        _saga("aliased", Aliased),
        _saga("priced", Priced),
    )
    yield built
    built.store.dispose()


def _refused(engine: SagaQ, saga: str, data: Any, **options: Any) -> str:
    with pytest.raises(InvalidInputError) as refused:
        engine.start(saga, data, **options)
    assert engine.list() == []  # nothing written
    return str(refused.value)


def test_an_idempotency_key_over_200_characters_is_refused_before_any_sql(engine: SagaQ) -> None:
    message = _refused(engine, "pay", {"order_id": "o-1"}, idempotency_key="k" * 201)

    assert "201 characters; the limit is 200" in message
    assert engine.start("pay", {"order_id": "o-1"}, idempotency_key="k" * 200).created


@pytest.mark.parametrize("deadline", [0, -5.0])
def test_a_deadline_not_in_the_future_is_refused(engine: SagaQ, deadline: float) -> None:
    assert "deadline must be > 0" in _refused(engine, "pay", {"order_id": "o"}, deadline=deadline)


def test_header_values_must_be_strings(engine: SagaQ) -> None:
    headers: Any = {"tenant": 42}

    assert "header 'tenant'" in _refused(engine, "pay", {"order_id": "o"}, headers=headers)


def test_the_input_limit_counts_utf8_bytes(tmp_path: Path) -> None:
    engine = SagaQ(
        embedded_app("utf8"), store=f"sqlite:///{tmp_path / 'u.db'}", max_input_bytes=100
    )
    engine.register(_saga("free", None))

    # 40 x "é" is 80 UTF-8 bytes (ASCII-escaped JSON would count 240): accepted.
    assert engine.start("free", {"s": "é" * 40}).created
    # 40 x "€" is 120 UTF-8 bytes: refused, and the message says so.
    with pytest.raises(InvalidInputError, match="is 129 bytes; the limit is 100"):
        engine.start("free", {"s": "€" * 40})
    engine.store.dispose()


@pytest.mark.parametrize(
    ("saga", "data"), [("aliased", {"orderId": "o-1"}), ("priced", {"cents": 250})]
)
def test_an_input_model_that_does_not_survive_its_round_trip_is_refused_at_start(
    engine: SagaQ, saga: str, data: dict[str, Any]
) -> None:
    message = _refused(engine, saga, data)

    assert "does not accept its own output" in message


def test_a_reused_key_with_the_same_input_returns_the_first_saga(engine: SagaQ) -> None:
    first = engine.start("pay", {"order_id": "o-1"}, idempotency_key="order-o-1")
    again = engine.start("pay", {"order_id": "o-1"}, idempotency_key="order-o-1")

    assert (first.created, again.created) == (True, False)
    assert again.id == first.id


def test_a_reused_key_with_different_input_is_a_conflict(engine: SagaQ) -> None:
    first = engine.start("pay", {"order_id": "o-1"}, idempotency_key="order-o-1")

    with pytest.raises(IdempotencyConflictError) as conflict:
        engine.start("pay", {"order_id": "o-2"}, idempotency_key="order-o-1")

    assert conflict.value.saga_id == first.id
    assert [r.id for r in engine.list()] == [first.id]
    assert engine.status(first.id).input == {"order_id": "o-1"}


def test_names_longer_than_the_store_holds_are_refused_at_definition() -> None:
    with pytest.raises(DefinitionError, match="201 characters, at most 200"):
        Saga("s" * 201)
    saga = Saga("short")
    with pytest.raises(DefinitionError, match="201 characters, at most 200"):
        saga.step(name="s" * 201)(lambda ctx: None)
