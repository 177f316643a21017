"""Chaos: a three-manager cluster in a network lab, under leader kills, a partition, a
cut-off worker and the loss of every manager at once.

Every manager, worker and client is a host (network namespace) of the lab; all of it
is removed after each test, pass or fail. Knobs:

- WARREN_CHAOS_KILLS: leader kills in the kill test (default 20)
- WARREN_CHAOS_CUT_SECONDS: how long the worker is cut off (default 60)
- WARREN_CHAOS_SEED: the random seed (default: random, printed)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cluster import (
    MANAGERS,
    STATS,
    WARREN,
    LabCluster,
    failover_times,
    running_containers,
    summary,
)
from netlab import Lab
from support import holds_within, wait_for
from writer import History, read_log

from warren.devtools.containerd import LocalContainerd, missing_binaries
from warren.devtools.image import build_busybox_image

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("_netlab_swept")]

KILLS = int(os.environ.get("WARREN_CHAOS_KILLS", "20"))
CUT_SECONDS = float(os.environ.get("WARREN_CHAOS_CUT_SECONDS", "60"))
SEED = int(os.environ.get("WARREN_CHAOS_SEED") or secrets.randbits(32))


@pytest.fixture
def rng() -> random.Random:
    print(f"chaos seed: {SEED} (WARREN_CHAOS_SEED to replay)")
    return random.Random(SEED)


@contextlib.contextmanager
def managed(
    lab: Lab, root: Path, request: pytest.FixtureRequest, **options: Any
) -> Iterator[LabCluster]:
    """A LabCluster whose processes are killed at the end (its logs printed on failure);
    the lab then removes the hosts with whatever is left in them."""
    cluster = LabCluster(lab, root, **options)
    STATS.clusters += 1
    try:
        yield cluster
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(cluster.logs())
        cluster.stop()


@pytest.fixture
def cluster(lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LabCluster]:
    """Three drained managers and two sim workers."""
    with managed(lab, tmp_path, request) as started:
        started.start(workers=("w1", "w2"))
        started.wait_converged()
        yield started


# -- the write stream ------------------------------------------------------------------


def acked_after(log: Path, moment: float) -> int:
    """Writes both started and acknowledged after moment."""
    return sum(1 for r in read_log(log) if r["ok"] and r["t_start"] >= moment)


@contextlib.contextmanager
def streaming(cluster: LabCluster, directory: Path, prefix: str) -> Iterator[Path]:
    """The writer runs on the client host for the block; yields its log."""
    log, stop = directory / f"writes-{prefix}.jsonl", directory / f"stop-{prefix}"
    writer = cluster.start_writer(log, stop, prefix, SEED)
    try:
        wait_for(lambda: acked_after(log, 0) >= 5 or not writer.alive, 60, "the first writes")
        assert writer.alive, f"the writer died:\n{writer.tail(40)}"
        yield log
    finally:
        stop.touch()
        # Its last write may wait for a timeout on each manager.
        with contextlib.suppress(subprocess.TimeoutExpired):
            assert writer.popen is not None
            writer.popen.wait(timeout=30)
        writer.kill()
        history = History.of(read_log(log))
        STATS.writes_acked += history.acked
        STATS.writes_failed += history.failed


def assert_writes_kept(cluster: LabCluster, log: Path) -> None:
    """After the heal: the managers converge and hold what the write log allows."""
    # A node whose agent still talks to a deposed leader looks ready until the new
    # leader's node-down timeout runs out: let it run out before judging.
    time.sleep(cluster.node_down_timeout + 2)
    snap = cluster.wait_converged()
    records = read_log(log)
    assert any(r["ok"] for r in records)
    leader = cluster.leader(snap)
    assert leader is not None
    problems = History.of(records).problems(snap[leader]["services"])
    assert not problems, "\n".join(problems)
    # The orchestrator caught up too: every service runs exactly its replicas.
    assert holds_within(lambda: not cluster.replica_mismatches(), 60), cluster.replica_mismatches()


# -- the tests ------------------------------------------------------------------------


def test_leader_killed_over_and_over_loses_no_acknowledged_write(
    cluster: LabCluster, tmp_path: Path, rng: random.Random
) -> None:
    kills: list[float] = []
    with streaming(cluster, tmp_path, "k") as log:
        try:
            for i in range(KILLS):
                leader = cluster.wait_healthy()
                time.sleep(rng.uniform(0, 1.0))  # a random moment in the stream
                killed = time.time()
                cluster.kill(leader)
                kills.append(killed)
                STATS.leader_kills += 1
                time.sleep(rng.uniform(0.3, 1.5))
                cluster.restart(leader)
                # The other two elected a leader and the writes went on.
                wait_for(partial(acked_after, log, killed), 30, f"a write after kill {i}")
            cluster.wait_healthy()
        finally:
            STATS.failovers += failover_times(kills, read_log(log))
    assert len(kills) == KILLS
    assert_writes_kept(cluster, log)


def test_partitioned_leader_is_refused_and_the_majority_goes_on(cluster: LabCluster) -> None:
    old = cluster.wait_healthy()
    majority = [m for m in MANAGERS if m != old]
    through_old = cluster.api(old)
    through_majority = ",".join(cluster.api(m) for m in majority)
    records: list[dict[str, Any]] = []

    cluster.hosts[old].isolate(*(cluster.hosts[m] for m in majority))
    cut = time.time()
    # The old leader alone cannot commit (nor forward) anything.
    records.append(cluster.write("create", "minority-1", managers=through_old))
    assert not records[-1]["ok"], records[-1]

    # The majority elects a leader of its own and takes writes.
    attempts = itertools.count()

    def majority_write() -> bool:
        records.append(
            cluster.write("create", f"majority-{next(attempts)}", managers=through_majority)
        )
        return bool(records[-1]["ok"])

    wait_for(majority_write, 30, "a write through the majority", interval=0.2)
    print(f"partition: the majority took a write {records[-1]['t_ack'] - cut:.2f}s after the cut")
    print(f"partition: the old leader said: {records[0]['error']}")
    for op, name, extra in [
        ("create", "after-1", ["--replicas", "2"]),
        ("create", "after-2", []),
        ("scale", "after-1", ["--replicas", "3"]),
        ("delete", "after-2", []),
    ]:
        records.append(cluster.write(op, name, *extra, managers=through_majority))
        assert records[-1]["ok"], records[-1]
    majority_view = cluster.snapshot(managers=majority)
    new = cluster.leader(majority_view)
    assert new in majority, summary(majority_view)
    # Still refused once the majority has a new leader.
    records.append(cluster.write("create", "minority-2", managers=through_old))
    assert not records[-1]["ok"], records[-1]

    cluster.hosts[old].heal()
    # The managers first (the old leader reachable again), the nodes at the end.
    snap = cluster.wait_converged(workers=False)
    services = snap[old]["services"]
    problems = History.of(records).problems(services)
    assert not problems, "\n".join(problems)
    # Stricter than the history: the minority's writes never reached a majority.
    names = {s["name"] for s in services}
    assert not names & {"minority-1", "minority-2"}
    assert {"after-1"} <= names and "after-2" not in names
    # Every node's agent found the new leader (a node left down has its tasks orphaned).
    leader = cluster.wait_leader()

    def down() -> list[str]:
        nodes = cluster.snapshot(managers=[leader])[leader].get("nodes", [])
        return [n["hostname"] for n in nodes if n["status"] != "ready"]

    assert holds_within(lambda: not down(), 60), f"nodes not ready 60s after the heal: {down()}"


def test_all_managers_killed_at_once_lose_no_acknowledged_write(
    cluster: LabCluster, tmp_path: Path
) -> None:
    with streaming(cluster, tmp_path, "all") as log:
        wait_for(lambda: acked_after(log, 0) >= 15, 60, "writes before the crash")
        cluster.kill(*MANAGERS)
        time.sleep(1)
        for name in MANAGERS:
            cluster.restart(name)
        restarted = time.time()
        cluster.wait_healthy(90)
        wait_for(lambda: acked_after(log, restarted) >= 5, 60, "writes after the restart")
    assert_writes_kept(cluster, log)


# -- a worker cut off from every manager, on real containers -----------------------------


@pytest.fixture(scope="module")
def containerd() -> Iterator[LocalContainerd]:
    """A private containerd (in the root namespace: its socket reaches every host)."""
    problems = missing_binaries()
    if not Path("/bin/busybox").exists():
        problems.append("/bin/busybox (busybox-static)")
    if problems:
        message = "the worker cut test needs: " + ", ".join(problems)
        if os.environ.get("WARREN_SKIP_CONTAINERD") == "1":
            pytest.skip(message)
        pytest.fail(message + "; set WARREN_SKIP_CONTAINERD=1 to skip", pytrace=False)
    with LocalContainerd() as ctd:
        yield ctd
    # Containers live under /warren/<id> in every cgroup controller; runc removes the
    # leaves, the parent is ours to remove (unless someone else's containers use it).
    for parent in Path("/sys/fs/cgroup").glob("*/warren"):
        with contextlib.suppress(OSError):
            parent.rmdir()


@pytest.fixture(scope="module")
def busybox_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_image(tmp_path_factory.mktemp("image") / "busybox-oci.tar")


def import_image(archive: Path, socket: Path, namespace: str, data_dir: Path) -> str:
    """Load the image into a worker's containerd namespace (no registry in the lab)."""
    result = subprocess.run(
        [*WARREN, "image", "import", str(archive), "--containerd-socket", str(socket),
         "--containerd-namespace", namespace, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[0]


def remove_containers(socket: Path, namespace: str) -> None:
    """Last resort after a failure: what the dead worker left in containerd."""
    ctr = ["ctr", "--address", str(socket), "-n", namespace]
    listed = subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True)
    for container in listed.stdout.split():
        for args in (["tasks", "kill", "-s", "SIGKILL", container],
                     ["tasks", "rm", "-f", container],
                     ["containers", "rm", container]):  # fmt: skip
            subprocess.run([*ctr, *args], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "delete", f"warren-{container}"], capture_output=True)


# `ip netns exec` gives its command a private mount namespace, where `ip netns add`
# (the worker's per-container network namespaces) mounts where containerd can't
# see it: the workers run in the lab's network namespace but in our mount namespace.
SHARED_MOUNTS = ["nsenter", f"--mount=/proc/{os.getpid()}/ns/mnt", "--"]


@dataclass
class Site:
    """A cluster whose workers run real containers, each on its containerd namespace."""

    cluster: LabCluster
    image: str
    socket: Path
    namespaces: dict[str, str]  # worker -> containerd namespace

    def containers(self, worker: str) -> dict[str, int]:
        return running_containers(self.socket, self.namespaces[worker])


@pytest.fixture
def site(
    lab: Lab,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    containerd: LocalContainerd,
    busybox_archive: Path,
) -> Iterator[Site]:
    """Three drained managers and two containerd workers."""
    socket = Path(containerd.socket)
    prefix = f"chaos-{secrets.token_hex(3)}"
    namespaces = {w: f"{prefix}-{w}" for w in ("w1", "w2")}
    # Simulated networks: this test is about a cut worker's containers, not their traffic.
    runtime = ["--runtime", "containerd", "--network-plane", "sim",
               "--containerd-socket", str(socket),
               "--containerd-namespace", prefix + "-{node}"]  # fmt: skip
    with managed(lab, tmp_path, request, worker_runtime=runtime) as cluster:
        try:
            cluster.start(workers=())
            images = {
                import_image(busybox_archive, socket, ns, tmp_path / f"import-{w}")
                for w, ns in namespaces.items()
            }
            for worker in namespaces:
                cluster.join_worker(worker, spawn_prefix=SHARED_MOUNTS)
            cluster.wait_converged()
            (image,) = images
            yield Site(cluster, image, socket, namespaces)
        finally:
            # Leave containerd as found: removing the services removes the containers.
            with contextlib.suppress(Exception):
                for service in cluster.json("service", "ls"):
                    cluster.cli("service", "rm", service["id"], check=False)
                wait_for(
                    lambda: not any(running_containers(socket, ns) for ns in namespaces.values()),
                    30,
                    "containers to go",
                )
            cluster.stop()
            for ns in namespaces.values():
                remove_containers(socket, ns)


def running_on(cluster: LabCluster, service: str) -> dict[str, list[str]]:
    """Hostname -> IDs of the service's tasks running (and meant to) there, as the
    leader says."""
    leader = cluster.wait_leader()
    answer = cluster.snapshot(tasks=service, managers=[leader])[leader]
    assert "error" not in answer, answer
    hostnames = {n["id"]: n["hostname"] for n in answer["nodes"]}
    out: dict[str, list[str]] = {}
    for task in answer["tasks"]:
        if task["desired"] == "running" and task["state"] == "running":
            out.setdefault(hostnames.get(task["node_id"], task["node_id"]), []).append(task["id"])
    return out


def test_cut_off_worker_keeps_and_restarts_its_tasks_and_converges(site: Site) -> None:
    cluster, image = site.cluster, site.image
    replicas = 4  # spread over both workers: two on w1, one to crash and one to watch
    cluster.cli("service", "create", "cut", "--image", image, "--replicas", str(replicas),
                "--init", "--restart-delay", "1s", "--", "sleep", "3600")  # fmt: skip
    placement = running_on(cluster, "cut")
    assert sum(len(ids) for ids in placement.values()) == replicas, placement
    assert len(placement.get("w1", [])) >= 2, f"too few tasks on w1 to cut off: {placement}"
    original = site.containers("w1")
    assert set(original) == set(placement["w1"])

    w1 = cluster.lab.host("w1")
    w1.isolate(*cluster.hosts.values())
    cut_at = time.monotonic()
    try:
        # A crash inside the cut-off worker is restarted there: same container, new PID.
        # Judged at the end, so that one failure does not hide the others.
        victim, pid = sorted(original.items())[0]
        os.kill(pid, signal.SIGKILL)
        restarted_locally = holds_within(
            lambda: site.containers("w1").get(victim) not in (None, pid), 15
        )
        untouched = {c: p for c, p in original.items() if c != victim}
        # The managers give up on w1 and replace its tasks on w2.
        wait_for(lambda: cluster.node_status("w1") == "down", 60, "w1 to be marked down")
        wait_for(
            lambda: len(running_on(cluster, "cut").get("w2", [])) == replicas,
            60,
            "w1's tasks replaced on w2",
        )
        # Meanwhile its other containers keep running (same PIDs), for the whole cut.
        while time.monotonic() - cut_at < CUT_SECONDS:
            now = site.containers("w1")
            assert {c: now.get(c) for c in untouched} == untouched, now
            assert victim in now or not restarted_locally, now
            time.sleep(2)
    finally:
        w1.heal()
    print(f"w1 cut off for {time.monotonic() - cut_at:.0f}s")

    seen: dict[str, Any] = {}

    def settled() -> bool:
        """Exactly the replicas on ready nodes, one container each: w1's orphans are gone."""
        seen["w1"] = cluster.node_status("w1")
        seen["tasks"] = running_on(cluster, "cut")
        seen["containers"] = {w: sorted(site.containers(w)) for w in site.namespaces}
        tasks = sorted(t for ids in seen["tasks"].values() for t in ids)
        containers = sorted(c for ids in seen["containers"].values() for c in ids)
        return seen["w1"] == "ready" and len(tasks) == replicas and containers == tasks

    # Every outcome is judged, then all failures reported together.
    problems = []
    if not restarted_locally:
        problems.append(f"container {victim}, killed on the cut-off worker, not restarted there")
    if not holds_within(settled, 60, interval=1):
        problems.append(f"60s after the heal, not {replicas} replicas on ready nodes: {seen}")
    else:
        time.sleep(3)  # room for a wrong extra task or container to show up
        if not settled():
            problems.append(f"not stable after the heal: {seen}")
    assert not problems, "\n".join(problems)
    cluster.wait_converged()
