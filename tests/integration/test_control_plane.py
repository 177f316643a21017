"""One manager and three sim workers, as real processes over loopback mTLS."""

from __future__ import annotations

import time

import pytest
from harness import Cluster, wait_for

pytestmark = pytest.mark.integration


def test_replicas_spread_evenly(three_workers: Cluster) -> None:
    c = three_workers
    c.cli("service", "create", "web", "--image", "busybox", "--replicas", "6")
    # `service create` waits for convergence, so everything already runs.
    assert c.placement("web") == {"w1": 2, "w2": 2, "w3": 2}


def test_scale_up_and_down(three_workers: Cluster) -> None:
    c = three_workers
    c.cli("service", "create", "web", "--image", "busybox", "--replicas", "2")
    c.cli("service", "scale", "web=9")
    assert sorted(c.placement("web").values()) == [3, 3, 3]
    c.cli("service", "scale", "web=3")
    wait_for(lambda: len(c.running("web")) == 3, 10, "scale down to 3")
    assert sorted(c.placement("web").values()) == [1, 1, 1]


def test_constraint_pins_tasks_to_labelled_node(three_workers: Cluster) -> None:
    c = three_workers
    c.cli("service", "create", "edge", "--image", "busybox", "--replicas", "3",
          "--constraint", "node.labels.zone==edge")  # fmt: skip
    assert c.placement("edge") == {"w1": 3}


def test_impossible_constraint_shows_its_reason(three_workers: Cluster) -> None:
    c = three_workers
    c.cli("service", "create", "nowhere", "--image", "busybox", "--detach",
          "--constraint", "node.labels.zone==moon")  # fmt: skip
    tasks = wait_for(
        lambda: [t for t in c.tasks("nowhere") if t["status"]["err"]], 10, "a pending reason"
    )
    assert tasks[0]["status"]["state"] == "pending"
    # Four nodes: the drained manager fails first on availability.
    assert tasks[0]["status"]["err"] == (
        "no suitable node (constraint not met on 3 nodes; node not ready or not active on 1 node)"
    )
    table = c.cli("service", "ps", "nowhere").stdout
    assert "constraint not met on 3 nodes" in table


def test_drain_moves_tasks_away(three_workers: Cluster) -> None:
    c = three_workers
    c.cli("service", "create", "web", "--image", "busybox", "--replicas", "6")
    c.cli("node", "update", "w2", "--availability", "drain")
    wait_for(lambda: c.placement("web") == {"w1": 3, "w3": 3}, 15, "tasks to leave w2")
    assert len(c.running("web")) == 6


def test_killed_worker_tasks_are_replaced(three_workers: Cluster) -> None:
    c = three_workers
    c.cli("service", "create", "web", "--image", "busybox", "--replicas", "6")
    started = time.monotonic()
    c.processes["w3"].kill()
    wait_for(lambda: c.node_status("w3") == "down", c.node_down_timeout + 5, "w3 down")
    wait_for(lambda: c.placement("web") == {"w1": 3, "w2": 3}, 15, "replacements on w1, w2")
    elapsed = time.monotonic() - started
    assert elapsed < c.node_down_timeout + 10
    orphaned = [t for t in c.tasks("web") if t["status"]["state"] == "orphaned"]
    assert len(orphaned) == 2


def test_returning_worker_stops_tasks_it_no_longer_owns(three_workers: Cluster) -> None:
    c = three_workers
    c.cli("service", "create", "web", "--image", "busybox", "--replicas", "3")
    c.processes["w3"].kill()
    wait_for(lambda: c.node_status("w3") == "down", c.node_down_timeout + 5, "w3 down")
    wait_for(lambda: len(c.running("web")) == 3, 15, "replacements")
    c.processes["w3"].start()  # same data dir: the node resumes
    wait_for(lambda: c.node_status("w3") == "ready", 15, "w3 back")
    time.sleep(1)
    assert len(c.running("web")) == 3
    assert "w3" not in c.placement("web")


def test_manager_kill_and_restart_keeps_state(three_workers: Cluster) -> None:
    c = three_workers
    c.cli("service", "create", "web", "--image", "busybox", "--replicas", "4")
    c.cli("service", "create", "db", "--image", "busybox", "--mode", "global")
    before_services = {s["id"]: s for s in c.json("service", "ls")}
    before_tasks = {t["id"] for t in c.json("service", "ps", "web", "db")}
    manager_id = c.node_id("manager-1")
    c.processes["manager"].kill()
    c.restart_manager()
    after_services = {s["id"]: s for s in c.json("service", "ls")}
    assert after_services.keys() == before_services.keys()
    assert {s["spec"]["name"] for s in after_services.values()} == {"web", "db"}
    assert before_tasks <= {t["id"] for t in c.json("service", "ps", "web", "db")}
    assert c.node_id("manager-1") == manager_id
    wait_for(lambda: len(c.running("web")) == 4, 20, "web running after restart")
    wait_for(lambda: len(c.running("db")) == 3, 20, "db on the three workers")


def test_worker_join_rerun_resumes_the_same_node(three_workers: Cluster) -> None:
    c = three_workers
    node_id = c.node_id("w2")
    c.processes["w2"].stop()
    c.processes["w2"].start()
    wait_for(lambda: c.node_status("w2") == "ready", 15, "w2 back")
    assert [n["id"] for n in c.nodes() if n["hostname"] == "w2"] == [node_id]


def test_global_service_follows_nodes(three_workers: Cluster) -> None:
    c = three_workers
    c.cli("service", "create", "agent", "--image", "busybox", "--mode", "global")
    assert c.placement("agent") == {"w1": 1, "w2": 1, "w3": 1}
    # Started once each: no task failed and was restarted on the way.
    assert len(c.tasks("agent")) == 3
    c.join_worker("w4")
    wait_for(lambda: c.placement("agent").get("w4") == 1, 15, "a task on the new node")
    c.cli("node", "update", "w1", "--availability", "drain")
    wait_for(lambda: "w1" not in c.placement("agent"), 15, "the task to leave w1")


def test_restart_policy_limits_attempts(three_workers: Cluster) -> None:
    c = three_workers
    # The sim runtime's `exit CODE AFTER` makes a container exit by itself.
    c.cli("service", "create", "crashy", "--image", "busybox", "--detach",
          "--restart-condition", "on-failure", "--restart-max-attempts", "2",
          "--restart-delay", "100ms", "--", "exit", "3", "0.2")  # fmt: skip

    def failed_runs() -> int:
        return sum(1 for t in c.tasks("crashy") if t["status"]["state"] == "failed")

    wait_for(lambda: failed_runs() >= 3, 20, "three failed runs")
    time.sleep(1)  # a fourth run would have started by now
    tasks = c.tasks("crashy")
    assert len(tasks) == 3, tasks
    assert all(t["status"]["state"] == "failed" for t in tasks)
    assert all(t["status"]["exit_code"] == 3 for t in tasks)
    assert {t["slot"] for t in tasks} == {1}


def test_completed_task_is_not_restarted_on_failure_policy(three_workers: Cluster) -> None:
    c = three_workers
    c.cli("service", "create", "job", "--image", "busybox", "--detach",
          "--restart-condition", "on-failure", "--", "exit", "0", "0.1")  # fmt: skip
    wait_for(lambda: [t["status"]["state"] for t in c.tasks("job")] == ["complete"], 10, "done")
    time.sleep(0.5)
    assert len(c.tasks("job")) == 1


def test_update_rolls_tasks_to_the_new_spec(three_workers: Cluster) -> None:
    c = three_workers
    c.cli("service", "create", "web", "--image", "busybox:1", "--replicas", "3")
    c.cli("service", "update", "web", "--image", "busybox:2", "--env-add", "MODE=blue")
    running = c.running("web")
    assert len(running) == 3
    assert {t["spec"]["container"]["image"] for t in running} == {"busybox:2"}
    assert {t["spec"]["container"]["env"]["MODE"] for t in running} == {"blue"}
    assert len([t for t in c.tasks("web") if t["desired_state"] == "shutdown"]) == 3


def test_remove_service_and_node(three_workers: Cluster) -> None:
    c = three_workers
    c.cli("service", "create", "web", "--image", "busybox", "--replicas", "3")
    c.cli("service", "rm", "web")
    assert c.json("service", "ls") == []
    refused = c.cli("node", "rm", "w3", check=False)
    assert refused.returncode == 1
    assert "not down" in refused.stderr
    c.processes["w3"].kill()
    wait_for(lambda: c.node_status("w3") == "down", c.node_down_timeout + 5, "w3 down")
    c.cli("node", "rm", "w3")
    assert c.node_status("w3") is None


def test_force_removed_live_worker_stops_with_a_clear_error(cluster: Cluster) -> None:
    cluster.init_manager("--availability", "drain")
    worker = cluster.join_worker("w1")
    cluster.cli("service", "create", "web", "--image", "busybox", "--replicas", "2")
    wait_for(lambda: len(cluster.running("web")) == 2, 20, "2 running replicas")
    node_id = cluster.node_id("w1")
    # A one-character prefix is not enough to remove a node (if it is not
    # the manager's too: then it is ambiguous).
    refused = cluster.cli("node", "rm", "--force", node_id[:1], check=False)
    assert refused.returncode == 1
    assert "too short" in refused.stderr or "ambiguous" in refused.stderr
    assert worker.alive

    cluster.cli("node", "rm", "--force", node_id[:6])
    assert worker.popen is not None
    code = worker.popen.wait(timeout=20)
    assert code == 1
    log = worker.tail(200)
    assert "removed from this cluster" in log
    assert "this node stops" in log
    # It left no replica behind: the cluster knows none on the removed node.
    assert all(
        t["node_id"] != node_id or t["desired_state"] == "shutdown" for t in cluster.tasks("web")
    )
