"""What `SagaQ(app, store=...)` does to and checks on the user's own Celery app.

sagaq's guarantees need a few Celery settings (JSON only, late acks, prefetch 1). A plain
`Celery("shop", broker=..., backend=...)` gets them here; a setting the user set explicitly
(in the constructor, `app.conf`, or `config_from_object`) is kept, and the unsafe ones are
logged when a worker starts. The other checks catch setups that would otherwise hang silently:
a join with no shared result backend, a worker that does not consume a queue sagas need.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.app.defaults import DEFAULTS

from sagaq.definition.saga import Saga
from sagaq.errors import ConfigurationError, DefinitionError
from sagaq.settings import Settings

if TYPE_CHECKING:
    from sagaq.client import SagaQ

log = logging.getLogger("sagaq")

SAFE_SETTINGS: dict[str, Any] = {
    # pickle would let anyone who can write to the broker run code on the workers.
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "task_serializer": "json",
    "result_serializer": "json",
    # At-least-once: ack after the task ran, requeue if the worker died under it.
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}

# The queue name sagas use unless they name one: it stands for the app's task_default_queue.
SAGA_DEFAULT_QUEUE = "default"

# Result backends that chords cannot use across processes: each process has its own (or none).
_PRIVATE_BACKENDS = ("cache+memory://", "memory://", "rpc://", "disabled")


def set_explicitly(app: Celery, key: str) -> bool:
    """Did the user set `key` (constructor, app.conf, config source), not Celery's default?"""
    conf = app.conf
    maps = getattr(conf, "maps", None)
    if isinstance(maps, list) and len(maps) > 1:
        # Celery's finalized conf: [changes, config source, ..., defaults]
        return any(key in m for m in maps[:-1])
    return bool(conf.get(key) != DEFAULTS.get(key))


def apply_safe_settings(app: Celery, settings: Settings) -> None:
    """Give `app` sagaq's safe settings and a bounded publish, except where the user chose."""
    for key, value in SAFE_SETTINGS.items():
        if not set_explicitly(app, key):
            app.conf[key] = value
    timeout = settings.publish_timeout
    # publish() reads this: how long start() may wait for a broker that is down.
    app.conf["sagaq_publish_timeout"] = timeout
    if not set_explicitly(app, "broker_connection_timeout"):
        app.conf["broker_connection_timeout"] = timeout
    if not set_explicitly(app, "redis_socket_connect_timeout"):
        app.conf["redis_socket_connect_timeout"] = timeout
    if not set_explicitly(app, "task_publish_retry_policy"):
        app.conf["task_publish_retry_policy"] = _retry_policy(timeout)
    # The Redis result backend subscribes to every task a client sends; with Redis down its
    # default policy retries for ~20 s before giving up, and start() would hang that long.
    # Only clients subscribe; a worker gets Celery's patient policy back when it starts
    # (restore_worker_retries), so a Redis restart does not fail the steps it is storing.
    options = dict(app.conf.get("result_backend_transport_options") or {})
    if "retry_policy" not in options:
        options["retry_policy"] = _retry_policy(timeout)
        app.conf["sagaq_bounded_backend_retries"] = True
    app.conf["result_backend_transport_options"] = options
    broker_options = dict(app.conf.get("broker_transport_options") or {})
    broker_options.setdefault("visibility_timeout", settings.visibility_timeout)
    app.conf["broker_transport_options"] = broker_options


def restore_worker_retries(app: Celery) -> None:
    """In a worker: drop the bounded result-backend retry policy sagaq added for clients."""
    if app.conf.get("sagaq_bounded_backend_retries"):
        options = dict(app.conf.get("result_backend_transport_options") or {})
        options.pop("retry_policy", None)
        app.conf["result_backend_transport_options"] = options
        app.conf["sagaq_bounded_backend_retries"] = False


def _retry_policy(budget: float) -> dict[str, float]:
    """A few quick retries that fit in `budget` seconds (0, 0.1, 0.2, ... capped)."""
    return {
        "max_retries": 3,
        "interval_start": 0,
        "interval_step": min(0.2, budget / 10),
        "interval_max": min(0.5, budget / 4),
    }


def unsafe_settings(app: Celery) -> list[str]:
    """What the user set that weakens sagaq's guarantees, one sentence each."""
    conf = app.conf
    found = []
    accepted = {str(c).lower() for c in conf.get("accept_content") or ()}
    if accepted & {"pickle", "application/x-python-serialize", "yaml", "application/x-yaml"}:
        found.append(
            f"accept_content={sorted(accepted)} accepts pickle/yaml: anyone who can write to "
            "the broker can run code on this worker; use ['json']"
        )
    if not conf.get("task_acks_late"):
        found.append(
            "task_acks_late is off: a step running when its worker dies is lost instead of "
            "redelivered (the sweeper finds it only later)"
        )
    if conf.get("task_acks_late") and not conf.get("task_reject_on_worker_lost"):
        found.append(
            "task_reject_on_worker_lost is off: a step whose worker process dies is acked, "
            "not redelivered"
        )
    return found


def adopt_default_queue(app: Celery, saga: Saga) -> None:
    """A saga or step without a queue of its own runs on the app's task_default_queue (a
    plain `celery -A app worker` consumes it), so errbacks and sagaq's own tasks do too."""
    target = str(app.conf.get("task_default_queue") or SAGA_DEFAULT_QUEUE)
    if target == SAGA_DEFAULT_QUEUE:
        return
    if saga.queue == SAGA_DEFAULT_QUEUE:
        saga.queue = target
    for step in saga.steps.values():
        if step.queue in (None, SAGA_DEFAULT_QUEUE):
            step.queue = target


# The store keeps saga and step names in VARCHAR(200) columns.
MAX_NAME_LENGTH = 200


def check_saga_fits(app: Celery, saga: Saga) -> None:
    """What register() refuses beyond the definition itself: names the store cannot hold,
    and a join the app cannot run."""
    for name in (saga.name, *saga.steps):
        if len(name) > MAX_NAME_LENGTH:
            raise DefinitionError(
                f"name {name[:40]!r}... of saga {saga.name[:40]!r} is {len(name)} characters; "
                f"the limit is {MAX_NAME_LENGTH}"
            )
    check_join_backend(app, saga)


def has_join(saga: Saga) -> bool:
    return any(len(step.depends_on) > 1 for step in saga.steps.values())


def check_join_backend(app: Celery, saga: Saga) -> None:
    """A join is a Celery chord: its parts meet in the result backend, which every worker
    must share. Raise when the broker spans processes but the backend does not."""
    if not has_join(saga):
        return
    broker = str(app.conf.get("broker_url") or "")
    if broker.startswith("memory://"):
        return  # one process: the in-memory backend is shared by its worker threads
    backend = str(app.conf.get("result_backend") or "disabled")
    if backend.startswith(_PRIVATE_BACKENDS):
        joins = [s.name for s in saga.steps.values() if len(s.depends_on) > 1]
        raise ConfigurationError(
            f"saga {saga.name!r} joins parallel steps ({', '.join(joins)}), which needs a "
            f"result backend shared by all workers, but the app's result_backend is "
            f"{backend!r}: set it to Redis (Celery(..., backend='redis://...') or "
            "SAGAQ_RESULT_BACKEND=redis://... with celeryconfig)"
        )


_checked_apps: weakref.WeakSet[Celery] = weakref.WeakSet()


def install_worker_checks(engine: SagaQ) -> None:
    """When a worker of `engine.app` starts: warn about unsafe settings, log an error for each
    queue that registered sagas need but the worker does not consume, and give the worker
    Celery's own result-backend retries back."""
    if engine.app in _checked_apps:
        return
    _checked_apps.add(engine.app)
    from celery.signals import worker_init

    engine_ref = weakref.ref(engine)

    def check(sender: Any = None, **_: Any) -> None:
        current = engine_ref()
        if current is None or getattr(sender, "app", None) is not current.app:
            return  # a worker of another app in this process
        app = current.app
        restore_worker_retries(app)
        for problem in unsafe_settings(app):
            log.warning("unsafe Celery setting: %s", problem)
        consumed = set(app.amqp.queues.consume_from or {})
        for queue, sagas in missing_queues(current, consumed):
            log.error(
                "this worker does not consume queue %r, which saga(s) %s need: what is routed "
                "there runs only if another worker consumes it (else add -Q %s)",
                queue,
                ", ".join(sorted(sagas)),
                queue,
            )

    # worker_init: sent by every worker (CLI, in-process) once its queues are known.
    worker_init.connect(check, weak=False)


def missing_queues(engine: SagaQ, consumed: Iterable[str]) -> list[tuple[str, set[str]]]:
    """(queue, sagas that use it) for each queue no consumer in `consumed` reads."""
    wanted: dict[str, set[str]] = {}
    for saga in engine.sagas.values():
        for queue in {saga.queue, *(s.queue or saga.queue for s in saga.steps.values())}:
            wanted.setdefault(queue, set()).add(saga.name)
    have = set(consumed)
    return [(q, names) for q, names in sorted(wanted.items()) if q not in have]
