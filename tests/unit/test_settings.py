"""One Settings object for every SAGAQ_* variable, each documented in the README's table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sagaq import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_table_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(SAGAQ_[A-Z_]+)` \| ([^|]+) \|", README.read_text(), re.M))

    for name, field in Settings.model_fields.items():
        variable = f"SAGAQ_{name.upper()}"
        assert variable in rows, f"{variable} is missing from the README's settings table"
        shown = rows[variable].strip().strip("`")
        expected = "none" if field.default is None else str(field.default)
        assert shown == expected, f"{variable}: README says {shown!r}, the default is {expected!r}"
    assert set(rows) == {f"SAGAQ_{n.upper()}" for n in Settings.model_fields}


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAQ_APP", "shop:engine")
    monkeypatch.setenv("SAGAQ_PUBLISH_TIMEOUT", "0.5")
    monkeypatch.setenv("SAGAQ_METRICS_PORT", "9100")

    settings = Settings()

    assert (settings.app, settings.publish_timeout, settings.metrics_port) == (
        "shop:engine",
        0.5,
        9100,
    )


TRACED_RUN = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

from sagaq import Saga, SagaQ
from sagaq.embedded import embedded_app, in_process_worker

saga = Saga("traced")
saga.step(name="only")(lambda ctx: {"ok": True})
app = embedded_app("traced")
engine = SagaQ(app, store="sqlite:///traced.db")  # no install_tracing() call
engine.register(saga)
with in_process_worker(app, engine.queues()):
    assert engine.start("traced", {}).wait(20).status == "COMPLETED"
print(sorted(span.name for span in exporter.get_finished_spans()))
"""


def test_sagaq_tracing_traces_steps_of_any_engine(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAQ_")}
    done = subprocess.run(
        [sys.executable, "-c", TRACED_RUN],
        cwd=tmp_path,
        env={**env, "SAGAQ_TRACING": "true"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "traced.only" in done.stdout, done.stdout
