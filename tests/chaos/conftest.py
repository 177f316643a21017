"""Fixtures for chaos tests: hosts in their own network namespaces (see netlab.py)."""

from __future__ import annotations

from collections.abc import Iterator

import netlab
import pytest
from cluster import STATS


def pytest_configure(config: pytest.Config) -> None:
    # Registered here because pyproject.toml belongs to others.
    config.addinivalue_line(
        "markers", "chaos: faults (partitions, link cuts, kills) across network namespaces"
    )


@pytest.fixture(scope="session")
def _netlab_swept() -> None:
    """Once per session: skip without root/tools, else drop leftovers of crashed runs."""
    reason = netlab.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    for name in netlab.sweep_stale():
        print(f"netlab: removed stale namespace {name}")


@pytest.fixture
def lab(_netlab_swept: None) -> Iterator[netlab.Lab]:
    """A fresh lab (unique prefix); everything in it is removed after the test."""
    with netlab.Lab() as the_lab:
        yield the_lab


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Here rather than in a test: printed at the very end, also after failures.
    if STATS.clusters:
        terminalreporter.section("chaos counts")
        for line in STATS.lines():
            terminalreporter.write_line(line)
