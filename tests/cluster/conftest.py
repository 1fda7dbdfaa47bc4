"""tests/cluster: the multi-host test (network namespaces; root only, skipped elsewhere)."""

from __future__ import annotations

import pytest

from tests.chaos.report import recorded


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, text in recorded("cluster").items():
        terminalreporter.write_sep("-", name)
        terminalreporter.write_line(text)
