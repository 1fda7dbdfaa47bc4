"""Logs: `SAGAQ_LOG_FORMAT=json` makes every log line one JSON object (python-json-logger), with
the saga fields typed: saga_id, saga, step (strings), attempt (int), status, duration_ms (float),
error. Text stays the default.

    install_logging(engine)   # in the worker module (workers/main.py), once

In a Celery worker, Celery sets up logging itself when it starts: the JSON formatter is put on
its handlers again then (after_setup_logger / after_setup_task_logger).
"""

from __future__ import annotations

import logging
import sys
import weakref
from typing import IO, TYPE_CHECKING, Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from sagaq.observability.publishers import LogPublisher
from sagaq.settings import Settings

if TYPE_CHECKING:
    from sagaq.client import SagaQ


def json_formatter() -> logging.Formatter:
    """time, level, logger, message, then whatever typed fields the record carries."""
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        # The string copy of the event's fields is for text formatters: JSON has typed ones.
        reserved_attrs=[*RESERVED_ATTRS, "sagaq_event"],
    )


_logged: weakref.WeakSet[Any] = weakref.WeakSet()


def install_logging(
    engine: SagaQ | None = None,
    *,
    log_format: Literal["text", "json"] | None = None,
    stream: IO[str] | None = None,
) -> logging.Formatter | None:
    """Log every saga event of `engine` (once), and with the json format (SAGAQ_LOG_FORMAT)
    format the root logger's output, and Celery's, as JSON. Returns the JSON formatter."""
    settings = Settings()
    if engine is not None and engine.events not in _logged:
        _logged.add(engine.events)
        engine.events.subscribe(LogPublisher())
    if (log_format or settings.log_format) != "json":
        return None
    formatter = json_formatter()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Celery sets the root logger's level from the worker's --loglevel: sagaq's own keep theirs.
    logging.getLogger("sagaq").setLevel(settings.log_level.upper())
    _format_celery_logs_with(formatter)
    return formatter


def _format_celery_logs_with(formatter: logging.Formatter) -> None:
    from celery.signals import after_setup_logger, after_setup_task_logger

    def reformat(logger: logging.Logger | None = None, **_: Any) -> None:
        for handler in (logger or logging.getLogger()).handlers:
            handler.setFormatter(formatter)

    after_setup_logger.connect(reformat, weak=False)
    after_setup_task_logger.connect(reformat, weak=False)
