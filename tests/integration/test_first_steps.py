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


def test_workers_show_an_address_and_a_rolling_update_keeps_the_spread(
    three_workers: Cluster,
) -> None:
    c = three_workers
    table = c.cli("node", "ls").stdout.splitlines()
    assert table[0].split()[-1] == "ADDRESS"
    # Every node, workers included, connects over loopback here.
    assert [line.split()[-1] for line in table[1:]] == ["127.0.0.1"] * 4
    c.cli("service", "create", "web", "--image", "busybox:1", "--replicas", "6")
    assert c.placement("web") == {"w1": 2, "w2": 2, "w3": 2}
    c.cli("service", "update", "web", "--image", "busybox:2")
    assert {t["spec"]["container"]["image"] for t in c.running("web")} == {"busybox:2"}
    assert c.placement("web") == {"w1": 2, "w2": 2, "w3": 2}
