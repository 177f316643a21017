"""What a new user meets first, against real processes."""

from __future__ import annotations

import pytest
from harness import Cluster

pytestmark = pytest.mark.integration


def test_second_init_keeps_the_first_clusters_admin_credentials(cluster: Cluster) -> None:
    cluster.init_manager()
    before = {path.name: path.read_bytes() for path in cluster.config_dir.iterdir()}
    second = cluster.root / "second"
    result = cluster.cli(
        "cluster", "init", "--data-dir", str(second), "--runtime", "sim", check=False
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {cluster.config_dir} already holds admin credentials")
    assert "--force" in line
    assert {path.name: path.read_bytes() for path in cluster.config_dir.iterdir()} == before
    assert not second.exists()
    # The first cluster's credentials still work.
    assert cluster.json("cluster", "info")["nodes"] == 1
