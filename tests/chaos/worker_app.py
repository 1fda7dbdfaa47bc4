"""The chaos worker, written the way workers/main.py is:

    celery -A tests.chaos.worker_app worker -P prefork -c 2 -Q <queue>

Configured from celeryconfig.py and SAGAQ_* variables: SAGAQ_BROKER_URL, SAGAQ_RESULT_BACKEND,
SAGAQ_STORE_URL (a PostgreSQL schema of its own, which also holds the ledger),
SAGAQ_VISIBILITY_TIMEOUT and SAGAQ_DEFAULT_QUEUE (the run's unique queue); SAGAQ_CHAOS_PIVOT
names the saga's pivot step (tests/cluster), SAGAQ_CHAOS_STEP_SECONDS how long steps sleep.
"""

import os

from celery import Celery

from sagaq import SagaQ, Settings
from tests.chaos.saga import Ledger, build_chaos_saga

settings = Settings()
app = Celery("sagaq-chaos", config_source="celeryconfig")
# Redis: look for messages of dead workers (unacked for longer than the visibility timeout)
# every second; kombu's default scans only every ~100 s.
app.conf.broker_transport_options = {
    **app.conf.broker_transport_options,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
engine = SagaQ(app, store=settings.store_url)
pivot = os.environ.get("SAGAQ_CHAOS_PIVOT") or None
engine.register(build_chaos_saga(settings.default_queue, Ledger(settings.store_url), pivot))
