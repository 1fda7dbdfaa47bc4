"""The Celery side of sagaq: tasks that run steps, compensations, the errback, finalizers."""

from sagaq.runtime.tasks import Runtime, install_control_tasks, install_saga_tasks, publish

__all__ = ["Runtime", "install_control_tasks", "install_saga_tasks", "publish"]
