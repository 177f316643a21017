"""node promote / demote: workers join Raft, serve the API, and leave it again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from harness import Cluster, free_port, wait_for

from warren.security.tls import IdentityFiles, identity_from_pem

pytestmark = pytest.mark.integration


def promotable_args(c: Cluster, name: str) -> list[str]:
    """The manager options of a worker that may be promoted; its ports go into
    ``c.manager_ports`` so that ``cli_at(name)`` reaches its API."""
    ports = c.manager_ports.setdefault(
        name, {p: free_port() for p in ("api", "rest", "metrics", "raft")}
    )
    return [
        "--advertise-addr", "127.0.0.1",
        "--listen-addr", "127.0.0.1",
        "--api-port", str(ports["api"]),
        "--rest-port", str(ports["rest"]),
        "--metrics-port", str(ports["metrics"]),
        "--raft-port", str(ports["raft"]),
        "--node-down-timeout", str(c.node_down_timeout),
    ]  # fmt: skip


@pytest.fixture
def promotable(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """One drained manager and two sim workers started with manager ports."""
    cluster = Cluster(tmp_path, node_down_timeout=10.0)
    try:
        cluster.init_manager("--availability", "drain")
        for name in ("w1", "w2"):
            cluster.join_worker(name, *promotable_args(cluster, name))
        yield cluster
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.logs())
        cluster.stop_all()


def manager_statuses(c: Cluster) -> dict[str, str]:
    return {n["hostname"]: n["manager_status"] for n in c.nodes() if n["role"] == "manager"}


def node(c: Cluster, hostname: str) -> dict[str, object]:
    return next(n for n in c.nodes() if n["hostname"] == hostname)


def answers_admin_calls(c: Cluster, name: str) -> bool:
    return c.cli_at(name, "service", "ls", check=False).returncode == 0


def certificate_role(c: Cluster, name: str) -> tuple[str, bool]:
    """The role a node's certificate names, and whether it may serve (serverAuth)."""
    _, pem, _ = IdentityFiles(c.root / name / "certs").load()
    usage = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    )
    return identity_from_pem(pem).role, ExtendedKeyUsageOID.SERVER_AUTH in usage.value


def test_promote_then_demote(promotable: Cluster) -> None:
    c = promotable
    assert not answers_admin_calls(c, "w1")
    assert certificate_role(c, "w1") == ("worker", False)

    promoted = c.cli("node", "promote", "w1", "--timeout", "45s", timeout=90)
    assert "Node w1 promoted to a manager in the cluster." in promoted.stdout
    # Any manager may answer: wait until its Raft view has the new member too.
    wait_for(
        lambda: manager_statuses(c) == {"manager-1": "leader", "w1": "reachable"},
        30,
        "w1 reachable as a manager",
    )
    assert node(c, "w1")["status"] == "ready"
    assert "already a manager" in c.cli("node", "promote", "w1").stdout
    assert certificate_role(c, "w1") == ("manager", True)

    # w1 serves the whole API: reads from its own store, writes forwarded.
    c.cli_at("w1", "service", "create", "web", "--image", "busybox", "--replicas", "2")
    reply = c.cli_at("w1", "--consistent", "service", "ls", "-o", "json")
    assert [s["spec"]["name"] for s in json.loads(reply.stdout)] == ["web"]
    assert len(c.running("web")) == 2

    c.cli("node", "promote", "w2", "--timeout", "45s", timeout=90)
    wait_for(
        lambda: sorted(manager_statuses(c).values()) == ["leader", "reachable", "reachable"],
        30,
        "three connected managers",
    )

    # The first manager dies: w1 or w2 leads, and writes go on.
    c.processes["manager"].kill()
    wait_for(
        lambda: (
            c.cli_at("w1", "service", "scale", "web=3", "--detach", check=False).returncode == 0
        ),
        30,
        "a write after the first manager died",
        interval=0.2,
    )
    wait_for(lambda: manager_statuses(c)["manager-1"] == "unreachable", 20, "manager-1 down")
    statuses = manager_statuses(c)
    leader = next(name for name in ("w1", "w2") if statuses[name] == "leader")
    follower = "w2" if leader == "w1" else "w1"
    wait_for(lambda: len(c.running("web")) == 3, 30, "3 replicas")

    # With manager-1 gone, demoting either of the two left would lose quorum.
    refused = c.cli("node", "demote", follower, check=False)
    assert refused.returncode == 1
    assert "lose quorum" in refused.stderr
    refused = c.cli("node", "demote", leader, check=False)
    assert refused.returncode == 1
    assert "let leadership move first" in refused.stderr

    c.cli("node", "rm", "manager-1")
    demoted = c.cli("node", "demote", follower)
    assert f"Manager {follower} demoted in the cluster." in demoted.stdout
    # It stops serving as a manager, keeps running tasks, and forgets it was one.
    wait_for(lambda: not answers_admin_calls(c, follower), 20, f"{follower}'s API to stop")
    assert manager_statuses(c) == {leader: "leader"}
    assert node(c, follower)["role"] == "worker"
    assert not (c.root / follower / "manager.json").exists()
    assert not (c.root / follower / "certs" / "ca-key.pem").exists()
    # A worker no longer holds a certificate that could serve as a manager's.
    assert certificate_role(c, follower) == ("worker", False)
    c.cli_at(leader, "service", "scale", "web=4")
    assert node(c, follower)["status"] == "ready"
    assert c.processes[follower].alive

    # Restarted with the same command, the demoted node is a worker only...
    c.processes[follower].stop()
    c.processes[follower].start()
    wait_for(lambda: c.node_status(follower) == "ready", 30, f"{follower} ready again")
    # ...and the promoted one resumes as a manager (the only one now).
    c.processes[leader].stop()
    c.processes[leader].start()
    wait_for(lambda: answers_admin_calls(c, leader), 60, f"{leader}'s API after its restart")
    assert [s["spec"]["name"] for s in c.json_at(leader, "service", "ls")] == ["web"]
    wait_for(lambda: manager_statuses(c) == {leader: "leader"}, 30, f"{leader} leading")
    assert not answers_admin_calls(c, follower)
    assert c.processes[follower].alive
    wait_for(lambda: len(c.running("web")) == 4, 30, "4 replicas")


def test_demote_of_a_worker_cancels_a_pending_promotion(promotable: Cluster) -> None:
    c = promotable
    # w1's process is stopped: the promotion waits for it.
    c.processes["w1"].stop()
    c.cli("node", "promote", "w1", "--detach")
    assert node(c, "w1")["desired_role"] == "manager"
    assert "Promotion of node w1 cancelled." in c.cli("node", "demote", "w1").stdout
    assert node(c, "w1").get("desired_role") is None
    c.processes["w1"].start()
    wait_for(lambda: c.node_status("w1") == "ready", 30, "w1 ready again")
    assert manager_statuses(c) == {"manager-1": "leader"}
    assert not answers_admin_calls(c, "w1")
