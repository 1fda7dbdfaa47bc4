"""compose/alerts.yml: valid rules (promtool check rules) that fire on the situations they name
and stay quiet otherwise (promtool test rules, fed with series like the API's /metrics).
Skipped where promtool is missing; CI installs it (Debian's prometheus package)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import REQUIRE_SERVICES

ALERTS = Path(__file__).resolve().parents[2] / "compose" / "alerts.yml"


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is missing (apt-get install prometheus)"
        if REQUIRE_SERVICES:
            pytest.fail(message + " and SAGAQ_REQUIRE_SERVICES=1")
        pytest.skip(message)
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_the_alert_rules_are_valid(promtool: str) -> None:
    checked = run(promtool, "check", "rules", str(ALERTS))

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout


SEVERITY = {"SagaFailed": "page", "SagaCompensatingTooLong": "warn", "SagaPastDeadline": "page"}


def fires(name: str, at: str, *sagas: str) -> dict[str, Any]:
    expected = [{"exp_labels": {"saga": s, "severity": SEVERITY[name]}} for s in sagas]
    return {"eval_time": at, "alertname": name, "exp_alerts": expected}


def test_each_alert_fires_on_its_situation_only(promtool: str, tmp_path: Path) -> None:
    # Given series as the API exports them: order has a FAILED saga and one compensating for
    # 15 min; travel is healthy but its oldest saga outlived its 5 min deadline.
    series = [
        ('sagaq_sagas{saga="order",status="FAILED"}', "1+0x20"),
        ('sagaq_sagas{saga="travel",status="FAILED"}', "0+0x20"),
        ('sagaq_longest_in_status_seconds{saga="order",status="COMPENSATING"}', "900+60x20"),
        ('sagaq_longest_in_status_seconds{saga="travel",status="COMPENSATING"}', "30+0x20"),
        ('sagaq_oldest_unfinished_saga_age_seconds{saga="order"}', "100+0x20"),
        ('sagaq_oldest_unfinished_saga_age_seconds{saga="travel"}', "200+60x20"),
        ('sagaq_saga_deadline_seconds{saga="order"}', "3600+0x20"),
        ('sagaq_saga_deadline_seconds{saga="travel"}', "300+0x20"),
    ]
    # promtool compares annotations too: test the expressions and labels on a copy without.
    rules = yaml.safe_load(ALERTS.read_text())
    for rule in rules["groups"][0]["rules"]:
        rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    checks = [
        fires("SagaFailed", "5m", "order"),
        fires("SagaCompensatingTooLong", "5m", "order"),
        # travel passes its deadline at 2 min (age 320 > 300), and `for: 1m` holds it back.
        fires("SagaPastDeadline", "2m"),
        fires("SagaPastDeadline", "5m", "travel"),
    ]
    spec = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "alert_rule_test": checks,
            }
        ],
    }
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(spec))

    tested = run(promtool, "test", "rules", str(tmp_path / "alerts_test.yml"))

    assert tested.returncode == 0, tested.stdout + tested.stderr
