"""One typed settings object for every SAGAQ_* environment variable, read alike by the CLI,
the API, the workers (celeryconfig.py, `SagaQ`) and compose. The defaults are the embedded
setup; the README's settings table lists each one."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """`Settings()` reads the environment each time it is built (nothing is cached)."""

    model_config = SettingsConfigDict(env_prefix="SAGAQ_", extra="ignore")

    # Where the engine lives, as "module:attribute" (a SagaQ): read by `sagaq` and the API.
    app: str | None = None
    broker_url: str = "memory://"
    result_backend: str = "cache+memory://"
    store_url: str = "sqlite:///sagaq.db"
    default_queue: str = "default"
    api_token: str | None = None
    # Named API tokens, {"alice": "<token>"}: the name is recorded as who acted in a history.
    api_tokens: dict[str, str] = {}
    # Redis redelivers a message not acked within this many seconds, even if its task is still
    # running; every step timeout must stay below it.
    visibility_timeout: int = 3600
    # Redis: how often (seconds) each worker looks for messages unacked for longer than the
    # visibility timeout (those of dead workers) and puts them back in their queue. kombu's
    # default scans only every ~100 s (10 s interval x throttle 10).
    unacked_restore_interval: int = 10
    # A running step renews its lease this often (seconds); a step whose worker died is taken
    # over after three missed beats.
    heartbeat: float = 10.0
    # start() gives up on a broker that does not take the message within this many seconds.
    publish_timeout: float = 2.0
    # Workers that build a SagaQ serve Prometheus metrics on this port when it is set.
    metrics_port: int | None = None
    # Logs: "json" makes every log line one JSON object with typed fields.
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    # The dashboard links each step to its Celery task in Flower at this URL.
    flower_url: str | None = None
    # A span per step and compensation (OpenTelemetry's global tracer provider), if installed.
    tracing: bool = False
