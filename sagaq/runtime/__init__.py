"""The Celery side of sagaq: tasks that run steps, compensations, the errback, finalizers,
and the recovery sweeper."""

from sagaq.runtime.base import Runtime, publish
from sagaq.runtime.launch import start_compensation, start_saga
from sagaq.runtime.sweeper import SweepReport, install_sweep_task, sweep
from sagaq.runtime.tasks import install_control_tasks, install_saga_tasks

__all__ = [
    "Runtime",
    "SweepReport",
    "install_control_tasks",
    "install_saga_tasks",
    "install_sweep_task",
    "publish",
    "start_compensation",
    "start_saga",
    "sweep",
]
