"""Worker entry point: `celery -A workers.main worker -Q default,inventory,payments`.

Configuration comes from celeryconfig.py and SAGAQ_* environment variables.
"""

from celery import Celery

from sagaq import SagaQ, Settings
from tasks import EXAMPLE_SAGAS

app = Celery("sagaq", config_source="celeryconfig")
engine = SagaQ(app, store=Settings().store_url)
engine.register(*EXAMPLE_SAGAS)
