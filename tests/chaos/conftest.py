"""Fixtures for chaos tests: hosts in their own network namespaces (see netlab.py)."""

from __future__ import annotations

import os
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
    """Once per session: fail (or skip, with WARREN_SKIP_CHAOS=1) without root/tools,
    else drop leftovers of crashed runs. A silent skip once hid a missing nft in CI."""
    reason = netlab.unavailable_reason()
    if reason is not None:
        if os.environ.get("WARREN_SKIP_CHAOS") == "1":
            pytest.skip(reason)
        pytest.fail(f"{reason} (run scripts/setup as root); set WARREN_SKIP_CHAOS=1 to skip")
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
