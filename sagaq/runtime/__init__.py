"""The Celery side of sagaq: tasks that run steps, compensations, the errback, finalizers,
and the recovery sweeper."""

from sagaq.runtime.sweeper import SweepReport, install_sweep_task, sweep
from sagaq.runtime.tasks import (
    Runtime,
    install_control_tasks,
    install_saga_tasks,
    publish,
    start_compensation,
)

__all__ = [
    "Runtime",
    "SweepReport",
    "install_control_tasks",
    "install_saga_tasks",
    "install_sweep_task",
    "publish",
    "start_compensation",
    "sweep",
]
