"""``warren network doctor`` end to end over gRPC on a sim cluster: the leader asks
every node over its session and prints a row per node; a stopped node is a
failure, and the exit code says so."""

from __future__ import annotations

import json

import pytest
from harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def test_the_doctor_hears_every_node_and_a_stopped_one_fails(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    c.join_worker("w1")
    c.cli("service", "create", "web", "--image", "busybox", "--publish", "8080:80")

    reports = json.loads(c.cli("network", "doctor", "-o", "json").stdout)
    assert sorted(r["hostname"] for r in reports) == ["manager-1", "w1"]
    # Sim nodes have no data plane to probe: nothing fails.
    assert not [check for r in reports for check in r["checks"] if check["result"] == "fail"]
    table = c.cli("network", "doctor", "--service", "web").stdout
    assert table.splitlines()[0].split() == ["NODE", "CHECK", "TARGET", "RESULT", "DETAIL"]

    c.processes["w1"].stop()
    wait_for(lambda: c.node_status("w1") == "down", c.node_down_timeout + 5, "w1 down")
    result = c.cli("network", "doctor", "--timeout", "2", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL w1 node" in result.stdout
    assert "hint: is it down?" in result.stdout
