"""Figures the chaos and cluster tests want in the pytest output whatever its capture mode:
each test records a summary, and a terminal-summary hook (tests/chaos/conftest.py,
tests/cluster/conftest.py) prints what this session recorded."""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[2] / "tests" / "artifacts"
_recorded: dict[str, str] = {}


def record_summary(name: str, text: str) -> None:
    _recorded[name] = text
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.txt").write_text(text + "\n")


def recorded(prefix: str) -> dict[str, str]:
    return {name: text for name, text in _recorded.items() if name.startswith(prefix)}
