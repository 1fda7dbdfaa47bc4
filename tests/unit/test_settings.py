"""One Settings object for every SAGAQ_* variable, each documented in the README's table."""

from __future__ import annotations

import re
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
