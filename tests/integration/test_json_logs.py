"""SAGAQ_LOG_FORMAT=json, as a worker process would run it: a saga runs on the embedded worker
in a fresh interpreter, and every line it logs is one JSON object whose saga fields keep their
types (attempt an int, duration_ms a number)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

SCRIPT = textwrap.dedent(
    """
    import sys
    from sagaq import NonRetryableError, Saga, SagaQ, StepContext
    from sagaq.embedded import embedded_app, in_process_worker
    from sagaq.observability.logs import install_logging

    shop = Saga("shop")

    @shop.step(retry=1, backoff=0.01)
    def reserve(ctx: StepContext) -> dict:
        if ctx.attempt == 1:
            raise ConnectionError("stock service timed out")
        return {"reserved": 2}

    @reserve.compensate
    def release(ctx: StepContext, result: dict) -> None:
        pass

    @shop.step(depends_on=[reserve])
    def charge(ctx: StepContext) -> dict:
        raise NonRetryableError("card declined")

    engine = SagaQ(embedded_app("json-logs"), store=sys.argv[1])
    engine.register(shop)
    install_logging(engine)
    with in_process_worker(engine.app, engine.queues()):
        result = engine.start("shop", {}).wait(30)
    print(result.id)
    """
)


def test_json_logs_are_one_object_per_line_with_typed_saga_fields(tmp_path: Path) -> None:
    env = {**os.environ, "SAGAQ_LOG_FORMAT": "json", "SAGAQ_LOG_LEVEL": "INFO"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, f"sqlite:///{tmp_path / 'logs.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    saga_id = done.stdout.strip()

    lines = [line for line in done.stderr.splitlines() if line.strip()]
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]  # every line is JSON
    events = [r for r in records if r.get("saga_id") == saga_id]

    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    kinds = [(r["event"], r.get("step")) for r in events]
    assert ("STEP_RETRYING", "reserve") in kinds and ("STEP_FAILED", "charge") in kinds
    retry = next(r for r in events if r["event"] == "STEP_RETRYING")
    assert retry["attempt"] == 1 and isinstance(retry["attempt"], int)
    assert "stock service timed out" in retry["error"] and retry["level"] == "INFO"
    completed = next(r for r in events if r["event"] == "STEP_COMPLETED")
    assert completed["status"] == "COMPLETED" and completed["saga"] == "shop"
    assert isinstance(completed["duration_ms"], float)
    failed = next(r for r in events if r["event"] == "STEP_FAILED")
    assert failed["level"] == "WARNING" and "card declined" in failed["error"]
    assert "sagaq_event" not in failed  # the string copy is for text formatters only
