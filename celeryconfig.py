"""Celery settings for sagaq workers and clients. URLs come from SAGAQ_* variables."""

from sagaq.settings import Settings

_settings = Settings()

broker_url = _settings.broker_url
result_backend = _settings.result_backend

# JSON only: pickle would let anyone who can write to the broker run code on the workers.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# At-least-once delivery: a message is acked after its task ran, and requeued if the worker
# died under it. sagaq's conditional state transitions absorb the duplicates.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# Redis redelivers unacked messages after this long; keep it above the longest step timeout.
# Every worker scans for such messages every `unacked_restore_interval` seconds (throttle 1:
# each scan really runs), so a dead worker's messages come back within visibility timeout +
# interval. README "Recovery times" has the figures.
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout,
    "unacked_restore_interval": _settings.unacked_restore_interval,
    "unacked_restore_throttle": 1,
}
result_backend_transport_options = {"visibility_timeout": _settings.visibility_timeout}
result_expires = 3600

task_default_queue = _settings.default_queue
task_create_missing_queues = True

# Flower sees every step.
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True

broker_connection_retry_on_startup = True

# `celery -A workers.main beat` runs sagaq's recovery sweeper (re-publishes lost work, resumes
# stalled compensations, enforces deadlines).
beat_schedule = {"sagaq-sweep": {"task": "sagaq.sweep", "schedule": 15.0}}
