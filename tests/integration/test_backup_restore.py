"""Backup a running cluster, lose it, and restore it into a new manager."""

from __future__ import annotations

import stat
import subprocess

import pytest
from harness import WARREN, Cluster, wait_for

pytestmark = pytest.mark.integration

DAMAGED = "Error: wrong passphrase or damaged backup"


def test_restore_brings_back_services_and_workers(cluster: Cluster) -> None:
    c = cluster
    c.init_manager("--availability", "drain")
    c.join_worker("w1")
    c.cli("service", "create", "web", "--image", "busybox", "--replicas", "2")
    c.cli("service", "create", "api", "--image", "busybox:1.36", "--env", "MODE=prod",
          "--label", "tier=back")  # fmt: skip
    before = {s["spec"]["name"]: s for s in c.json("service", "ls")}
    token = c.join_token("worker")

    passphrase = c.root / "passphrase"
    passphrase.write_text("a long backup passphrase\n")
    backup = c.root / "cluster.wbk"
    out = c.cli("cluster", "backup", "-o", str(backup), "--passphrase-file", str(passphrase))
    assert "(2 services, 2 nodes)" in out.stdout
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    c.stop_all()

    # A wrong passphrase fails with one line and leaves the target alone.
    target = c.root / "restored"
    wrong = c.root / "wrong"
    wrong.write_text("not the passphrase\n")
    result = subprocess.run(
        [*WARREN, "cluster", "restore", str(backup), "--passphrase-file", str(wrong),
         "--data-dir", str(target)],
        capture_output=True, text=True, env=c.env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [DAMAGED]
    assert not target.exists()

    # A new manager, with a new data dir and new ports.
    del c.manager_ports["manager"]
    args = [*WARREN, "cluster", "restore", str(backup), "--passphrase-file", str(passphrase),
            *c._manager_args("restored", "manager-2"), "--availability", "drain"]  # fmt: skip
    c.ports = c.manager_ports["restored"]
    restored = c._spawn("restored", args)
    wait_for(lambda: c._api_ready(restored, "restored"), 60, "the restored manager's API")

    after = {s["spec"]["name"]: s for s in c.json("service", "ls")}
    assert {name: s["spec"] for name, s in after.items()} == {
        name: s["spec"] for name, s in before.items()
    }
    assert {name: s["id"] for name, s in after.items()} == {
        name: s["id"] for name, s in before.items()
    }
    nodes = {n["hostname"]: n for n in c.nodes()}
    assert set(nodes) == {"manager-2", "w1"}
    assert nodes["w1"]["status"] == "down"
    # Same CA and secrets: the old join token still works.
    assert c.join_token("worker") == token

    # The old worker resumes from its data dir against the new manager.
    c._spawn("w1", [*WARREN, "worker", "join", "--manager", c.manager_address,
                    "--data-dir", str(c.root / "w1"), *c._runtime_args("w1"),
                    "--node-name", "w1"])  # fmt: skip
    wait_for(lambda: c.node_status("w1") == "ready", 30, "w1 to reconnect")
    wait_for(lambda: c.placement("web") == {"w1": 2}, 30, "web to run on w1")
    wait_for(lambda: c.placement("api") == {"w1": 1}, 30, "api to run on w1")

    # A new worker joins with the token of the old cluster.
    c.join_worker("w2", token=token)
    c.cli("service", "scale", "web=4")
    wait_for(lambda: c.placement("web") == {"w1": 2, "w2": 2}, 30, "web to spread")


def test_a_worker_certificate_cannot_take_a_backup(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    c.join_worker("w1")
    backup = c.root / "b.wbk"
    env = {**c.env, "WARREN_BACKUP_PASSPHRASE": "a long backup passphrase"}
    # The worker's identity files, used as if they were an admin's.
    result = subprocess.run(
        [*WARREN, "--manager", c.manager_address, "--config-dir", str(c.root / "w1" / "certs"),
         "cluster", "backup", "-o", str(backup)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: worker certificates may not call this method"
    ]
    assert not backup.exists()
