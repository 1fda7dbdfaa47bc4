"""The Celery side of sagaq: tasks that run steps, compensations, the errback, finalizers."""

from sagaq.runtime.tasks import install_control_tasks, install_saga_tasks, publish

__all__ = ["install_control_tasks", "install_saga_tasks", "publish"]
