"""A user's own `Celery(...)` app handed to `SagaQ`: the safe settings it gets, the settings of
the user's that it keeps, and the setups it refuses or reports instead of hanging. No services:
brokers on closed ports stand for brokers that are down."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery

from sagaq import BrokerUnavailableError, ConfigurationError, Saga, SagaQ
from sagaq.app_config import unsafe_settings
from sagaq.embedded import embedded_app, in_process_worker

DOWN_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1
DOWN_AMQP = "amqp://guest:guest@127.0.0.1:1//"


def noop(ctx: object) -> None:
    return None


def diamond(name: str = "diamond", queue: str | None = None) -> Saga:
    saga = Saga(name) if queue is None else Saga(name, queue=queue)
    a = saga.step(name="a")(noop)
    b = saga.step(name="b", depends_on=[a])(noop)
    c = saga.step(name="c", depends_on=[a])(noop)
    saga.step(name="d", depends_on=[b, c])(noop)
    return saga


def line(name: str = "line") -> Saga:
    saga = Saga(name)
    first = saga.step(name="first")(noop)
    saga.step(name="second", depends_on=[first])(noop)
    return saga


def plain_app(**kwargs: str | None) -> Celery:
    return Celery(f"shop-{uuid.uuid4().hex[:6]}", set_as_current=False, **kwargs)  # type: ignore[arg-type]


def test_a_plain_app_gets_json_only_late_acks_and_prefetch_one(tmp_path: Path) -> None:
    app = plain_app(broker=DOWN_REDIS, backend=DOWN_REDIS)

    SagaQ(app, store=f"sqlite:///{tmp_path / 's.db'}")

    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert unsafe_settings(app) == []


def test_settings_the_user_chose_win_and_the_unsafe_ones_are_named(tmp_path: Path) -> None:
    app = plain_app(broker=DOWN_REDIS, backend=DOWN_REDIS)
    app.conf.update(
        accept_content=["json", "pickle"], task_acks_late=False, worker_prefetch_multiplier=4
    )

    SagaQ(app, store=f"sqlite:///{tmp_path / 's.db'}")

    assert app.conf.accept_content == ["json", "pickle"]
    assert app.conf.task_acks_late is False
    assert app.conf.worker_prefetch_multiplier == 4
    problems = unsafe_settings(app)
    assert any("pickle" in p for p in problems)
    assert any("task_acks_late is off" in p for p in problems)


def test_sagaq_tasks_go_to_the_apps_default_queue(tmp_path: Path) -> None:
    """A plain `celery -A shop worker` consumes `celery`: every saga task must be there."""
    app = plain_app(broker=DOWN_REDIS, backend=DOWN_REDIS)
    engine = SagaQ(app, store=f"sqlite:///{tmp_path / 's.db'}")
    own_queue = diamond("routed", queue="payments")

    engine.register(diamond(), own_queue)

    assert engine.queues() == ["celery", "payments"]
    assert {s.queue for s in engine.sagas["diamond"].steps.values()} == {"celery"}


@pytest.mark.parametrize("backend", [None, "cache+memory://", "rpc://"])
def test_a_join_without_a_shared_result_backend_is_refused_at_register(
    tmp_path: Path, backend: str | None
) -> None:
    engine = SagaQ(
        plain_app(broker=DOWN_REDIS, backend=backend), store=f"sqlite:///{tmp_path}/s.db"
    )

    with pytest.raises(ConfigurationError) as refused:
        engine.register(diamond())

    message = str(refused.value)
    assert "saga 'diamond' joins parallel steps (d)" in message
    assert "result_backend" in message and "redis://" in message
    assert "diamond" not in engine.sagas
    engine.register(line())  # no join: no backend needed


def test_a_join_is_fine_with_a_shared_backend_or_an_in_process_broker(tmp_path: Path) -> None:
    shared = SagaQ(plain_app(broker=DOWN_AMQP, backend=DOWN_REDIS), store=f"sqlite:///{tmp_path}/a")
    embedded = SagaQ(embedded_app("joins"), store=f"sqlite:///{tmp_path}/b")

    shared.register(diamond())
    embedded.register(diamond())

    assert "diamond" in shared.sagas and "diamond" in embedded.sagas


@pytest.mark.parametrize(
    ("broker", "backend"), [(DOWN_REDIS, DOWN_REDIS), (DOWN_AMQP, None)], ids=["redis", "amqp"]
)
def test_start_refuses_within_two_seconds_when_the_broker_is_down(
    tmp_path: Path, broker: str, backend: str | None
) -> None:
    engine = SagaQ(plain_app(broker=broker, backend=backend), store=f"sqlite:///{tmp_path}/s.db")
    engine.register(line())

    began = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as refused:
        engine.start("line", {}, idempotency_key="order-1")
    took = time.monotonic() - began

    assert took < 2.5, f"took {took:.2f}s"
    assert "was not started" in str(refused.value)
    assert "restart" not in str(refused.value)
    assert engine.list() == []  # nothing left behind
    engine.store.dispose()


class Recorded(logging.Handler):
    """On the `sagaq` logger itself: Celery's worker replaces the root logger's handlers."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


def test_a_worker_that_misses_a_queue_sagas_need_logs_an_error_naming_both(
    tmp_path: Path,
) -> None:
    app = embedded_app("missing-queue")
    app.conf.task_acks_late = False
    engine = SagaQ(app, store=f"sqlite:///{tmp_path / 's.db'}")
    queue = f"checkout-{uuid.uuid4().hex[:6]}"
    engine.register(diamond("checkout", queue=queue))
    recorded = Recorded()
    logging.getLogger("sagaq").addHandler(recorded)
    try:
        with in_process_worker(app, ["elsewhere"]):
            pass
    finally:
        logging.getLogger("sagaq").removeHandler(recorded)

    errors = [text for level, text in recorded.lines if level == logging.ERROR]
    assert any(f"does not consume queue {queue!r}" in e and "checkout" in e for e in errors)
    warnings = [text for level, text in recorded.lines if level == logging.WARNING]
    assert any("task_acks_late is off" in w for w in warnings), warnings
    engine.store.dispose()


def test_only_clients_get_the_short_result_backend_retries(tmp_path: Path) -> None:
    """A client gives up on Redis within SAGAQ_PUBLISH_TIMEOUT; a worker storing a result
    during a Redis restart keeps Celery's patient retries."""
    app = embedded_app("retries")
    engine = SagaQ(app, store=f"sqlite:///{tmp_path / 's.db'}")
    engine.register(line())
    client_policy = app.conf.result_backend_transport_options.get("retry_policy")

    with in_process_worker(app, engine.queues()):
        worker_policy = app.conf.result_backend_transport_options.get("retry_policy")

    assert client_policy is not None and client_policy["max_retries"] == 3
    assert worker_policy is None  # Celery's default policy
    engine.store.dispose()


def test_a_publish_that_fails_for_any_reason_leaves_no_saga_behind(tmp_path: Path) -> None:
    """Not only a broker that is down: here Celery refuses a queue the app does not declare."""
    app = embedded_app("undeclared-queue")
    app.conf.task_create_missing_queues = False
    engine = SagaQ(app, store=f"sqlite:///{tmp_path / 's.db'}")
    saga = Saga("lost", queue="nowhere")
    saga.step(name="only")(noop)
    engine.register(saga)

    with pytest.raises(Exception, match="nowhere"):
        engine.start("lost", {}, idempotency_key="k-1")

    assert engine.list() == []  # the sweeper will not find a saga to run later
    engine.store.dispose()
