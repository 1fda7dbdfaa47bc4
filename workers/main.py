"""Worker entry point: `celery -A workers.main worker -Q default,inventory,payments`.

Configuration comes from celeryconfig.py and SAGAQ_* environment variables.
"""

from celery import Celery

from sagaq import SagaQ, Settings
from sagaq.observability.logs import install_logging
from sagaq.observability.tracing import install_tracing
from tasks import EXAMPLE_SAGAS

app = Celery("sagaq", config_source="celeryconfig")
# SagaQ serves worker metrics when SAGAQ_METRICS_PORT is set (any worker that builds one).
engine = SagaQ(app, store=Settings().store_url)
engine.register(*EXAMPLE_SAGAS)
install_tracing(engine)  # a span per step when opentelemetry is installed; otherwise nothing
install_logging(engine)  # a log line per saga event; JSON objects with SAGAQ_LOG_FORMAT=json
