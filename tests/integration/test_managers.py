"""Three managers: membership, failover, forwarding, quorum, and who may speak Raft."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import Cluster, wait_for

from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.security.ca import CertificateAuthority, generate_key, key_pem
from warren.security.etcd_peer import issue_etcd_peer_certificate
from warren.security.tls import IdentityFiles

pytestmark = pytest.mark.integration


@pytest.fixture
def managers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """manager (the first, leader at start), m2, m3 and one sim worker."""
    cluster = Cluster(tmp_path, node_down_timeout=10.0)
    try:
        cluster.init_manager("--availability", "drain")
        cluster.join_manager("m2", "--availability", "drain")
        cluster.join_manager("m3", "--availability", "drain")
        cluster.join_worker("w1")
        # Raft connections to the newest member may take a moment to come up.
        wait_for(
            lambda: (
                sorted(manager_statuses(cluster).values()) == ["leader", "reachable", "reachable"]
            ),
            30,
            "three connected managers",
        )
        yield cluster
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.logs())
        cluster.stop_all()


def manager_statuses(c: Cluster) -> dict[str, str]:
    return {n["hostname"]: n["manager_status"] for n in c.nodes() if n["role"] == "manager"}


def leader(c: Cluster) -> str:
    statuses = manager_statuses(c)
    (name,) = [host for host, status in statuses.items() if status == "leader"]
    return "manager" if name == "manager-1" else name


def test_every_manager_serves_the_api_and_writes_reach_the_leader(managers: Cluster) -> None:
    c = managers
    assert sorted(manager_statuses(c).values()) == ["leader", "reachable", "reachable"]
    # A write through a follower is forwarded to the leader...
    c.cli_at("m3", "service", "create", "web", "--image", "busybox", "--replicas", "2")
    # ...and a linearizable read on any manager sees it at once...
    for name in ("manager", "m2", "m3"):
        reply = c.cli_at(name, "--consistent", "service", "ls", "-o", "json")
        assert [s["spec"]["name"] for s in json.loads(reply.stdout)] == ["web"]
    # ...as every manager's own store does soon after.
    for name in ("manager", "m2", "m3"):
        wait_for(
            lambda name=name: (
                [s["spec"]["name"] for s in c.json_at(name, "service", "ls")] == ["web"]
            ),
            10,
            f"{name} to apply the write",
        )
    assert len(c.running("web")) == 2


def test_leader_failover_keeps_accepting_writes(managers: Cluster) -> None:
    c = managers
    c.cli("service", "create", "web", "--image", "busybox", "--replicas", "2")
    old = leader(c)
    c.processes[old].kill()
    started = time.monotonic()
    wait_for(
        lambda: c.cli("service", "scale", "web=4", "--detach", check=False).returncode == 0,
        20,
        "a write after the leader died",
        interval=0.05,
    )
    print(f"write accepted {time.monotonic() - started:.2f}s after the kill")
    wait_for(lambda: len(c.running("web")) == 4, 20, "4 replicas")
    statuses = manager_statuses(c)
    assert list(statuses.values()).count("leader") == 1
    # The worker followed the leader: it never went down.
    assert c.node_status("w1") == "ready"
    # The old leader comes back as a follower with the state it missed.
    c.restart_manager(old)
    wait_for(
        lambda: c.json_at(old, "service", "inspect", "web")[0]["spec"]["replicas"] == 4,
        20,
        "the old leader to catch up",
    )
    wait_for(
        lambda: sorted(manager_statuses(c).values()) == ["leader", "reachable", "reachable"],
        20,
        "three managers again",
    )
    assert len(c.running("web")) == 4


def test_all_managers_killed_at_once_lose_no_acknowledged_write(managers: Cluster) -> None:
    c = managers
    for i in range(5):
        c.cli("service", "create", f"s{i}", "--image", "busybox", "--detach")
    c.cli("service", "scale", "s0=3", "--detach")
    for name in ("manager", "m2", "m3"):
        c.processes[name].kill()
    for name in ("manager", "m2", "m3"):
        c.processes[name].start()
    wait_for(lambda: c.cli("cluster", "info", check=False).returncode == 0, 60, "a leader")
    services = {s["spec"]["name"]: s for s in c.json("service", "ls")}
    assert sorted(services) == [f"s{i}" for i in range(5)]
    assert services["s0"]["spec"]["replicas"] == 3


def test_removing_a_manager_refuses_to_lose_quorum(managers: Cluster) -> None:
    c = managers
    other = next(n for n in ("m2", "m3") if n != leader(c))
    c.processes[other].kill()
    wait_for(lambda: manager_statuses(c)[other] == "unreachable", 20, f"{other} unreachable")

    def refused_for_quorum() -> bool:
        # The live follower (recomputed: leadership may move after the kill).
        follower = next(n for n in ("manager", "m2", "m3") if n not in (other, leader(c)))
        refused = c.cli("node", "rm", "manager-1" if follower == "manager" else follower,
                        check=False)  # fmt: skip
        assert refused.returncode == 1
        return "lose quorum" in refused.stderr

    wait_for(refused_for_quorum, 20, "a refusal to lose quorum")
    # The dead one can go: the two left are both reachable.
    c.cli("node", "rm", other)
    assert other not in manager_statuses(c)
    # Its certificate is still signed by the CA, but no longer speaks for a manager.
    ca, cert, key = IdentityFiles(c.root / other / "certs").load()
    address = f"127.0.0.1:{c.manager_ports[leader(c)]['api']}"
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    with (
        grpc.secure_channel(address, credentials) as channel,
        pytest.raises(grpc.RpcError) as refused_rpc,
    ):
        pb_grpc.ControlStub(channel).ListServices(pb.Empty(), timeout=10)
    assert refused_rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    c.cli("service", "create", "after", "--image", "busybox", "--detach")
    assert [s["spec"]["name"] for s in c.json("service", "ls")] == ["after"]


def _peer_answer(port: int, ca_pem: bytes, cert: Path, key: Path) -> str:
    """ "answered" when an etcd member's peer port answers GET /members over
    mutual TLS with this certificate, else how it refused."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.check_hostname = False
    context.load_cert_chain(cert, key)
    request = b"GET /members HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n"
    reply = b""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(request)
            # The status line is enough (etcd keeps the connection open a while).
            while b"\r\n" not in reply and (chunk := tls.recv(65536)):
                reply += chunk
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused ({exc})"
    return "answered" if reply.startswith(b"HTTP/1.1 200") else f"refused ({reply[:80]!r})"


def _identity(directory: Path, cert_pem: bytes, key: bytes) -> tuple[Path, Path]:
    directory.mkdir()
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key)
    return directory / "cert.pem", directory / "key.pem"


def test_a_process_without_the_clusters_etcd_certificate_cannot_speak_raft(
    managers: Cluster, tmp_path: Path
) -> None:
    c = managers
    c.cli("service", "create", "web", "--image", "busybox", "--detach")
    ca_pem = (c.root / "manager" / "certs" / "ca.pem").read_bytes()
    # A peer certificate as Warren issues one, from another CA (a guessed key)...
    foreign = CertificateAuthority.create("intruder")
    foreign_key = generate_key()
    foreign_cert = issue_etcd_peer_certificate(foreign, foreign_key, "127.0.0.1")
    # ...and a certificate of this cluster's CA that is a worker's.
    _, worker_cert, worker_key = IdentityFiles(c.root / "w1" / "certs").load()
    intruders = {
        "another CA's etcd certificate": _identity(
            tmp_path / "foreign", foreign_cert, key_pem(foreign_key)
        ),
        "a worker's certificate": _identity(tmp_path / "worker", worker_cert, worker_key),
    }
    for name in ("manager", "m2", "m3"):
        port = c.manager_ports[name]["raft"]
        # The member's own certificate opens it: the probe reaches etcd.
        tls = c.root / name / "etcd" / "tls"
        assert _peer_answer(port, ca_pem, tls / "cert.pem", tls / "key.pem") == "answered"
        for what, (cert, key) in intruders.items():
            outcome = _peer_answer(port, ca_pem, cert, key)
            assert outcome.startswith("refused"), (name, what, outcome)
    # The group never noticed: same leader, writes still commit.
    c.cli("service", "scale", "web=2", "--detach")
    assert sorted(manager_statuses(c).values()) == ["leader", "reachable", "reachable"]
