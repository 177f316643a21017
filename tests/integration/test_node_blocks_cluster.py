"""Every node holds a block of the default network, tasks or not (its address in
the WireGuard mesh), and a removed node's block is released: end to end on a
sim cluster through the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def _default_blocks(c: Cluster) -> dict[str, str]:
    (network,) = json.loads(c.cli("network", "inspect", "default", "-o", "json").stdout)
    blocks: list[dict[str, Any]] = network["blocks"]
    return {block["node_id"]: block["subnet"] for block in blocks}


def test_a_node_running_no_task_holds_a_default_block_until_removed(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    c.join_worker("w1")
    manager, worker = c.node_id("manager-1"), c.node_id("w1")
    wait_for(lambda: set(_default_blocks(c)) == {manager, worker}, 10, "both nodes' blocks")
    blocks = _default_blocks(c)
    assert blocks[manager] != blocks[worker]

    c.processes["w1"].stop()
    wait_for(lambda: c.node_status("w1") == "down", c.node_down_timeout + 5, "w1 down")
    assert _default_blocks(c) == blocks  # down, not removed: it keeps its block
    c.cli("node", "rm", "w1")
    wait_for(lambda: set(_default_blocks(c)) == {manager}, 10, "w1's block released")
