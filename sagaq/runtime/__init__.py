"""The Celery side of sagaq: task bodies for steps, compensations and the errback, the Celery
tasks that carry them, every publish (launch.py), and the recovery sweeper."""

from sagaq.runtime.base import Delivery, Runtime, publish
from sagaq.runtime.launch import cancel, retry, start_compensation, start_saga
from sagaq.runtime.sweeper import SweepReport, install_sweep_task, sweep
from sagaq.runtime.tasks import install_control_tasks, install_saga_tasks

__all__ = [
    "Delivery",
    "Runtime",
    "SweepReport",
    "cancel",
    "install_control_tasks",
    "install_saga_tasks",
    "install_sweep_task",
    "publish",
    "retry",
    "start_compensation",
    "start_saga",
    "sweep",
]
