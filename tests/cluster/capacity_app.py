"""The worker of the capacity measurement (tests/cluster/capacity.py):

    celery -A tests.cluster.capacity_app worker -P prefork -c 2 -Q <queue>

One saga, `line5`: five no-op steps in a row, each with a no-op compensation, so what is
measured is sagaq's own cost per step. Configured like any sagaq worker (SAGAQ_* variables).
"""

from typing import Any

from celery import Celery

from sagaq import Saga, SagaQ, Settings, StepContext

SAGA = "line5"
LENGTH = 5


def _noop(ctx: StepContext) -> dict[str, Any]:
    return {"step": ctx.step}


def _undo(ctx: StepContext, result: Any) -> None:
    return None


def build_line(queue: str) -> Saga:
    saga = Saga(SAGA, queue=queue)
    previous: list[str] = []
    for i in range(1, LENGTH + 1):
        saga.step(name=f"s{i}", depends_on=previous)(_noop).compensate(_undo)
        previous = [f"s{i}"]
    return saga


settings = Settings()
app = Celery("sagaq-capacity", config_source="celeryconfig")
engine = SagaQ(app, store=settings.store_url)
engine.register(build_line(settings.default_queue))
