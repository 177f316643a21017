"""Chaos: a three-manager cluster in a network lab, under leader kills, a partition, a
cut-off worker, the loss of every manager at once, and message faults between managers;
plus a linearizability check of register reads and compare-and-swaps across leader kills.

Every manager, worker and client is a host (network namespace) of the lab; all of it
is removed after each test, pass or fail. The tests:

- test_leader_killed_over_and_over_loses_no_acknowledged_write
- test_partitioned_leader_is_refused_and_the_majority_goes_on
- test_all_managers_killed_at_once_lose_no_acknowledged_write
- test_message_faults_between_managers_lose_no_acknowledged_write: while the writer
  streams, message faults on every manager's interface, phase after phase (delay with
  jitter, which reorders; loss; duplication; all of them with reordering, and a leader
  kill), then cleared; the same checks as after the kills. ``tc netem`` where the
  kernel has sch_netem; elsewhere (this project's CI machines) nftables at eth0's
  egress drops and duplicates, and an HTB class holds packets back (netlab.Host.netem).
- test_register_history_is_linearizable_across_leader_kills: clients on the client
  host, each through one manager, read registers (services reg-0..2, the value their
  env REG) with linearizable reads and compare-and-swap them (an update carrying the
  version read); the history, across leader kills, must pass linearizability.check.
- test_cut_off_worker_keeps_and_restarts_its_tasks_and_converges (real containers)

Knobs:

- WARREN_CHAOS_KILLS: leader kills in the kill test (default 20)
- WARREN_CHAOS_CUT_SECONDS: how long the worker is cut off (default 60)
- WARREN_CHAOS_FAULT_SECONDS: how long each message-fault phase lasts (default 12)
- WARREN_CHAOS_LIN_KILLS: leader kills in the linearizability test (default 3)
- WARREN_CHAOS_SEED: the random seed (default: random, printed)
- WARREN_SKIP_NETEM=1: skip the message-fault test where neither engine can run
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
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
from linearizability import Op, Recorder, check
from netlab import Lab, fault_engine, netem_unavailable_reason
from support import holds_within, wait_for
from writer import History, read_log

from warren.devtools.containerd import LocalContainerd, missing_binaries
from warren.devtools.image import build_busybox_image

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("_netlab_swept")]

KILLS = int(os.environ.get("WARREN_CHAOS_KILLS", "20"))
CUT_SECONDS = float(os.environ.get("WARREN_CHAOS_CUT_SECONDS", "60"))
FAULT_SECONDS = float(os.environ.get("WARREN_CHAOS_FAULT_SECONDS", "12"))
LIN_KILLS = int(os.environ.get("WARREN_CHAOS_LIN_KILLS", "3"))
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


# -- message faults between managers -------------------------------------------------------


@pytest.fixture
def netem_ready() -> None:
    """Fail (or skip, with WARREN_SKIP_NETEM=1) where message faults cannot run."""
    reason = netem_unavailable_reason()
    if reason is not None:
        if os.environ.get("WARREN_SKIP_NETEM") == "1":
            pytest.skip(reason)
        pytest.fail(f"{reason}; set WARREN_SKIP_NETEM=1 to skip", pytrace=False)


# (phase, netem options on every manager's eth0, whether the leader is killed in it).
# netem sends each packet at its own delayed time, so jitter reorders; "reorder" sends
# some packets at once, ahead of the delayed ones. The faults hit all a manager sends:
# to the other managers, and to the workers and the client too.
FAULT_PHASES: list[tuple[str, dict[str, float], bool]] = [
    ("delay 40ms, jitter 30ms", {"delay_ms": 40, "jitter_ms": 30}, False),
    ("loss 10%", {"loss_pct": 10}, False),
    ("duplication 25%", {"duplicate_pct": 25}, False),
    (
        "delay 30ms, jitter 20ms, loss 5%, duplication 5%, reorder 10% + leader kill",
        {"delay_ms": 30, "jitter_ms": 20, "loss_pct": 5, "duplicate_pct": 5, "reorder_pct": 10},
        True,
    ),
]


def writes_between(log: Path, start: float, end: float) -> tuple[int, int]:
    """(acknowledged, failed) of the writes started in [start, end)."""
    records = [r for r in read_log(log) if start <= r["t_start"] < end]
    acked = sum(1 for r in records if r["ok"])
    return acked, len(records) - acked


@pytest.mark.usefixtures("netem_ready")
def test_message_faults_between_managers_lose_no_acknowledged_write(
    cluster: LabCluster, tmp_path: Path, rng: random.Random
) -> None:
    hosts = [cluster.hosts[m] for m in MANAGERS]
    phases: list[tuple[str, float, float]] = []  # (name, start, end), time.time()
    kills: list[float] = []
    with streaming(cluster, tmp_path, "faults") as log:
        try:
            for name, options, kill in FAULT_PHASES:
                for host in hosts:
                    host.netem(**options)
                started = time.time()
                if kill:
                    time.sleep(rng.uniform(1, 3))
                    leader = cluster.wait_leader(60)
                    killed = time.time()
                    cluster.kill(leader)
                    kills.append(killed)
                    STATS.leader_kills += 1
                    time.sleep(rng.uniform(0.3, 1.5))
                    cluster.restart(leader)
                    wait_for(partial(acked_after, log, killed), 60, "a write after the kill")
                time.sleep(max(0.0, started + FAULT_SECONDS - time.time()))
                phases.append((name, started, time.time()))
        finally:
            for host in hosts:
                host.clear_netem()
            STATS.failovers += failover_times(kills, read_log(log))
        cleared = time.time()
        wait_for(lambda: acked_after(log, cleared) >= 5, 60, "writes after the faults")
        phases.append(("cleared", cleared, time.time()))
    print(f"faults: engine {fault_engine()}")
    for name, start, end in phases:
        acked, failed = writes_between(log, start, end)
        print(f"faults: {name}: {end - start:.0f}s, {acked} writes acknowledged, {failed} failed")
    for time_taken in failover_times(kills, read_log(log)):
        print(f"faults: leader kill under faults -> next acknowledged write {time_taken:.2f}s")
    assert not any(h.netem_options for h in hosts)
    assert_writes_kept(cluster, log)


# -- a linearizable register history across leader kills --------------------------------

REGISTERS = ("reg-0", "reg-1", "reg-2")
INITIAL = "init"
CLIENTS_PER_MANAGER = 2
REGISTER_CLIENT = [sys.executable, str(Path(__file__).with_name("register_client.py"))]


class RegisterClient:
    """One register_client.py on the client host, talking to one manager; driven by
    one test thread (see register_client.py for the protocol)."""

    def __init__(self, cluster: LabCluster, name: str, manager: str, log: Path) -> None:
        self.name = name
        self.manager = manager
        args = [*cluster.client.exec_prefix(), *REGISTER_CLIENT,
                "--config-dir", str(cluster.config_dir),
                "--manager", cluster.api(manager)]  # fmt: skip
        with open(log, "ab") as errors:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env=cluster.env,
                start_new_session=True,
            )

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"register client {self.name} exited ({self.proc.poll()})")
        return dict(json.loads(line))

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@dataclass
class ClientRun:
    """What one client thread did besides the history: errors seen, its failure."""

    errors: Counter[str]
    failure: BaseException | None = None


def run_register_client(
    client: RegisterClient,
    recorder: Recorder,
    rng: random.Random,
    stop: threading.Event,
    run: ClientRun,
) -> None:
    """Read a random register, then (mostly) compare-and-swap it from the value read
    to a value of its own, until stopped. Timeouts are recorded as unknown."""
    written = 0
    try:
        while not stop.is_set():
            key = rng.choice(REGISTERS)
            op = recorder.read(client.name, key)
            read = client.ask(op="read", key=key)
            recorder.complete(op, read["outcome"], read.get("value"))
            if read["outcome"] != "ok":
                run.errors[read["error"].split(":")[0]] += 1
            elif rng.random() < 0.6:
                written += 1
                new = f"{client.name}-{written}"
                op = recorder.cas(client.name, key, read["value"], new)
                cas = client.ask(op="cas", key=key, version=read["version"], new=new)
                recorder.complete(op, cas["outcome"], cas.get("swapped"))
                if cas["outcome"] != "ok":
                    run.errors[cas["error"].split(":")[0]] += 1
            time.sleep(rng.uniform(0.05, 0.3))
    except BaseException as exc:
        run.failure = exc


def first_swap_after(recorder: Recorder, moment: float) -> float | None:
    """When the first compare-and-swap invoked after moment (monotonic) swapped."""
    swaps = [
        op.completed
        for op in recorder.history()
        if op.kind == "cas" and op.result is True and op.invoked >= moment
    ]
    return min(swaps) if swaps else None


def describe_history(history: list[Op], clients: list[RegisterClient]) -> list[str]:
    """Counts for the report: ops by kind and outcome, ok reads by manager."""
    managers = {c.name: c.manager for c in clients} | {f"cli-{m}": m for m in MANAGERS}
    kinds = Counter(
        f"{op.kind} {'swapped' if op.result else 'compare failed'}"
        if op.kind == "cas" and op.outcome == "ok"
        else f"{op.kind} {op.outcome}"
        for op in history
    )
    reads = Counter(
        managers[str(op.client)] for op in history if op.kind == "read" and op.outcome == "ok"
    )
    return [
        f"linearizability: {len(history)} ops: "
        + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())),
        "linearizability: ok reads by manager: " + ", ".join(f"{m} {reads[m]}" for m in MANAGERS),
    ]


def test_register_history_is_linearizable_across_leader_kills(
    lab: Lab, tmp_path: Path, request: pytest.FixtureRequest, rng: random.Random
) -> None:
    recorder = Recorder()
    stop = threading.Event()
    clients: list[RegisterClient] = []
    threads: list[threading.Thread] = []
    runs: list[ClientRun] = []
    failovers: list[float] = []
    with managed(lab, tmp_path, request) as cluster:
        try:
            cluster.start(workers=())
            cluster.wait_converged()
            for i, manager in enumerate(MANAGERS * CLIENTS_PER_MANAGER):
                name = f"c{i}-{manager}"
                log = tmp_path / f"register-{name}.log"
                clients.append(RegisterClient(cluster, name, manager, log))
            for key in REGISTERS:
                created = clients[0].ask(op="create", key=key, value=INITIAL)
                assert created["outcome"] == "ok", created
            for client in clients:
                runs.append(ClientRun(Counter()))
                thread = threading.Thread(
                    target=run_register_client,
                    args=(client, recorder, random.Random(rng.random()), stop, runs[-1]),
                    name=client.name,
                )
                threads.append(thread)
                thread.start()
            time.sleep(3)
            for i in range(LIN_KILLS):
                leader = cluster.wait_healthy()
                time.sleep(rng.uniform(0.5, 2.0))
                killed = time.monotonic()
                cluster.kill(leader)
                STATS.leader_kills += 1
                time.sleep(rng.uniform(0.3, 1.5))
                cluster.restart(leader)
                swapped = wait_for(
                    partial(first_swap_after, recorder, killed),
                    30,
                    f"a compare-and-swap after kill {i}",
                )
                failovers.append(swapped - killed)
                time.sleep(rng.uniform(2, 4))
            cluster.wait_healthy()
            time.sleep(5)  # every manager serves again: reads through each
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            for client in clients:
                client.close()
        failures = [run.failure for run in runs if run.failure is not None]
        assert not failures, failures
        # The last reads with the command itself, through each manager: part of the history.
        for manager in MANAGERS:
            for key in REGISTERS:
                op = recorder.read(f"cli-{manager}", key)
                shown = cluster.cli("--consistent", "service", "inspect", key,
                                    managers=cluster.api(manager))  # fmt: skip
                (service,) = json.loads(shown.stdout)
                recorder.complete(op, "ok", service["spec"]["container"]["env"]["REG"])
        history = recorder.history()
        for line in describe_history(history, clients):
            print(line)
        errors = sum((run.errors for run in runs), Counter())
        print(f"linearizability: errors (unknown or failed ops): {dict(errors)}")
        print(
            "linearizability: leader kill -> first compare-and-swap after it: "
            + ", ".join(f"{t:.2f}s" for t in failovers)
        )
        STATS.failovers += failovers
        started = time.monotonic()
        result = check(history, initial=INITIAL)
        took = time.monotonic() - started
        explored = sum(k.explored for k in result.keys)
        print(
            f"linearizability: {len(history)} ops checked in {took * 1000:.0f} ms "
            f"({explored} states explored): {result.verdict}"
        )
        assert result.ok, result.explanation
        # The check has teeth on this very history: a read of the initial value after
        # all of it, on a register swapped away from it, is refused.
        swapped_key = next(op.key for op in history if op.kind == "cas" and op.result is True)
        end = max(op.completed for op in history if op.outcome == "ok")
        stale = Op(len(history), "stale", swapped_key, "read", end + 1, end + 2, "ok",
                   result=INITIAL)  # fmt: skip
        assert check([*history, stale], initial=INITIAL).verdict == "not linearizable"
        # The history was worth checking: every manager answered reads, swaps went through.
        reads = Counter(
            c.manager
            for c in clients
            for op in history
            if op.client == c.name and op.kind == "read" and op.outcome == "ok"
        )
        assert all(reads[m] >= 10 for m in MANAGERS), reads
        assert sum(1 for op in history if op.kind == "cas" and op.result is True) >= 20
        # Every manager holds the same state after all that.
        cluster.wait_converged()


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
