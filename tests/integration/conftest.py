from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A sim cluster whose processes are all stopped at the end, pass or fail."""
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.logs())
        cluster.stop_all()


@pytest.fixture
def three_workers(cluster: Cluster) -> Cluster:
    """One drained manager and three sim workers (w1 labelled zone=edge)."""
    cluster.init_manager("--availability", "drain")
    cluster.join_worker("w1", "--label", "zone=edge")
    cluster.join_worker("w2")
    cluster.join_worker("w3")
    return cluster
