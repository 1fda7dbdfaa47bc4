"""One typed settings object, read from SAGAQ_* environment variables by the CLI, the API,
the workers (celeryconfig.py) and compose alike. The defaults are the embedded setup."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAGAQ_", extra="ignore")

    broker_url: str = "memory://"
    result_backend: str = "cache+memory://"
    store_url: str = "sqlite:///sagaq.db"
    default_queue: str = "default"
    api_token: str | None = None
    # Redis redelivers a message not acked within this many seconds, even if its task is still
    # running; every step timeout must stay below it.
    visibility_timeout: int = 3600
    # Redis: how often (seconds) each worker looks for messages unacked for longer than the
    # visibility timeout (those of dead workers) and puts them back in their queue. kombu's
    # default scans only every ~100 s (10 s interval x throttle 10).
    unacked_restore_interval: int = 10
