"""pytest plugin of `make test-clock` (loaded with -p tests.clock.plugin): says on which
(faked) wall-clock times the first test started and the last one ended, so the runner can
show that the run went past the faked midnight or DST change."""

from __future__ import annotations

import time

import pytest

#: Marks the line the runner reads.
SPAN = "test-clock-span:"

_first: float | None = None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Note the wall-clock time the first test starts at."""
    global _first
    if _first is None:
        _first = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """`test-clock-span: <first start> <now>` in epoch seconds."""
    if _first is not None:
        terminalreporter.write_line(f"{SPAN} {_first:.3f} {time.time():.3f}")
