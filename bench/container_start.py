#!/usr/bin/env python3
"""Time from `service create` / `service scale` to running containers, on real containerd.

Setup (once, not timed): a private containerd (warren.devtools LocalContainerd), a
loopback registry holding the busybox image, and a one-node Warren cluster started
as `warren cluster init --runtime containerd` (the manager's own agent runs the
tasks). The image is pulled once beforehand (a 1-replica service created and
removed), so the runs time starting containers, not the first pull.

Per run, through the gRPC client (warren.cli.client.WarrenClient, no CLI start-up):
  A. create a service of 3 replicas (--init, `sleep 3600`), until the API shows 3 running;
  B. scale it 3 -> 30, until the API shows 30 running;
  then remove it and wait until `ctr containers ls` in Warren's namespace is empty.
The floor, per run: 3 and then 30 concurrent `ctr run -d` of the same (pulled) image,
until `ctr tasks ls` shows them all RUNNING, then `ctr task kill -s KILL` + `ctr rm`.

    .venv/bin/python bench/container_start.py [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from benchkit import Manager, one_node_manager, print_table, rss_mib, wait_for

from warren.cli.client import WarrenClient
from warren.core.models import ContainerSpec, NodeStatus, ServiceSpec
from warren.core.states import TaskState
from warren.devtools.containerd import LocalContainerd, missing_binaries
from warren.devtools.image import build_busybox_image
from warren.devtools.registry import LocalRegistry

SWARM = {"a": 0.75, "b": 3.92}  # Docker Swarm, same two steps, same kind of 2-core machine
SWARM_NOTE = "Docker Swarm figures: same two steps on the same kind of 2-core machine"
POLL = 0.02  # seconds between API polls while waiting for running tasks
QUIET_LOAD = 1.0  # 1-minute load average above which the machine is busy
QUIET_POLL = 30.0
QUIET_MAX_WAIT = 15 * 60.0
COMMAND = ("sleep", "3600")
TAG = "busybox:latest"
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")


@dataclass(frozen=True)
class Settings:
    runs: int
    first: int  # replicas created in step A
    scaled: int  # replicas after step B
    quick: bool
    wait: bool  # for a quiet machine before measuring


def parse_args() -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 run, scale to 10 only, no waiting for a quiet load"
    )
    parser.add_argument("--runs", type=int, help="measured runs (default 5; 1 with --quick)")
    parser.add_argument(
        "--no-wait", action="store_true", help="measure even if the 1-minute load is above 1"
    )
    args = parser.parse_args()
    runs = args.runs if args.runs is not None else (1 if args.quick else 5)
    if runs < 1:
        parser.error("--runs must be at least 1")
    return Settings(
        runs=runs,
        first=3,
        scaled=10 if args.quick else 30,
        quick=args.quick,
        wait=not (args.quick or args.no_wait),
    )


# -- machine state -------------------------------------------------------------------


def load_1min() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_until_quiet(wait: bool) -> float:
    """The 1-minute load once at most QUIET_LOAD (or when giving up); waits up to 15 min."""
    load = load_1min()
    if not wait:
        return load
    waited = 0.0
    while load > QUIET_LOAD and waited < QUIET_MAX_WAIT:
        print(f"1-minute load {load:.2f} > {QUIET_LOAD:g}: waiting {QUIET_POLL:g}s for quiet")
        sys.stdout.flush()
        time.sleep(QUIET_POLL)
        waited += QUIET_POLL
        load = load_1min()
    if load > QUIET_LOAD:
        print(f"warning: load still {load:.2f} after {waited / 60:.0f} min; measuring anyway")
    return load


def scan_cpu(roots: set[int], marker: str) -> tuple[float, float]:
    """CPU seconds (reaped children included) of ``roots``, of containerd shims naming
    ``marker`` (our containerd's socket) and of all their descendants (runc, `ip`, ctr,
    the containers); and of kernel threads. One pass over /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    family = set(roots)
    kernel = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            if fields[1] == "2" or pid == 2:  # kthreadd and its children
                kernel += (int(fields[11]) + int(fields[12])) / tick
                continue
            cpu[pid] = sum(int(v) for v in fields[11:15]) / tick
            parent[pid] = int(fields[1])
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if os.path.basename(args[0]).startswith(b"containerd-shim") and any(
            marker.encode() in arg for arg in args
        ):
            family.add(pid)
    ours = 0.0
    for pid, seconds in cpu.items():
        ancestor, hops = pid, 0
        while ancestor not in family and ancestor > 1 and hops < 64:
            ancestor, hops = parent.get(ancestor, 0), hops + 1
        if ancestor in family:
            ours += seconds
    return ours, kernel


def proc_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime (reaped children such as `ip`)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuUse:
    """CPUs used on average over a step."""

    manager: float  # the manager process (manager + agent) and its children (`ip`)
    ours: float  # this benchmark's process trees: manager, containerd, shims, containers
    kernel: float  # kernel threads (some of it caused by us, e.g. namespace clean-up)
    others: float  # everything else: other work on the machine (and interrupts)


@dataclass
class CpuSplit:
    """Machine CPU over a step, split to tell whether other work skewed a figure."""

    roots: set[int]  # this process, the manager, containerd
    manager: int
    socket_marker: str
    marks: tuple[float, ...] = ()

    def _sample(self) -> tuple[float, ...]:
        ours, kernel = scan_cpu(self.roots, self.socket_marker)
        return time.monotonic(), proc_cpu(self.manager), ours, kernel, busy_seconds()

    def start(self) -> None:
        self.marks = self._sample()

    def stop(self) -> CpuUse:
        now, manager, ours, kernel, busy = (
            b - a for a, b in zip(self.marks, self._sample(), strict=True)
        )
        wall = max(now, 1e-9)
        others = max(busy - ours - kernel, 0.0)
        return CpuUse(manager / wall, ours / wall, kernel / wall, others / wall)


# -- the cluster ------------------------------------------------------------------------


class Ctr:
    def __init__(self, containerd: LocalContainerd, namespace: str) -> None:
        self.containerd = containerd
        self.namespace = namespace

    def argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.containerd.socket), "-n", self.namespace, *args]

    def __call__(self, *args: str) -> str:
        result = self.containerd.ctr(*args, namespace=self.namespace)
        if result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def containers(self) -> list[str]:
        return self("containers", "ls", "-q").split()

    def task_states(self) -> dict[str, str]:
        return {
            fields[0]: fields[2]
            for line in self("tasks", "ls").splitlines()[1:]
            if len(fields := line.split()) >= 3
        }


@dataclass
class Bench:
    settings: Settings
    root: Path
    containerd: LocalContainerd = field(default_factory=LocalContainerd)
    registry: LocalRegistry | None = None
    manager: Manager | None = None
    client: WarrenClient | None = None
    image: str = ""
    warren_ns: str = field(default_factory=lambda: f"wrn-bench-{secrets.token_hex(3)}")
    floor_ns: str = field(default_factory=lambda: f"wrn-floor-{secrets.token_hex(3)}")
    task_ids: set[str] = field(default_factory=set)
    cgroups_before: set[Path] = field(default_factory=set)
    cpu: dict[str, list[CpuUse]] = field(default_factory=lambda: {"a": [], "b": []})

    # -- setup ----------------------------------------------------------------------

    def prepare(self) -> None:
        """The image in a loopback registry, and containerd."""
        self.cgroups_before = set(self.cgroup_parents())
        archive = build_busybox_image(self.root / "busybox-oci.tar", TAG)
        self.registry = LocalRegistry(self.root / "registry").start()
        self.image = self.registry.push_archive(archive, TAG)
        self.containerd.start()

    def runtime_args(self) -> list[str]:
        """The manager's `cluster init` flags: containerd, and the registry."""
        assert self.registry is not None
        return [
            "--runtime", "containerd",
            "--containerd-socket", str(self.containerd.socket),
            "--containerd-namespace", self.warren_ns,
            "--insecure-registry", self.registry.address,
        ]  # fmt: skip

    def setup(self, manager: Manager) -> None:
        """Once the manager serves: its agent ready, the image pulled in both namespaces."""
        self.manager = manager
        self.client = manager.client()
        wait_for(self.node_ready, 30, "the manager's agent to be ready")
        # Pull once, through Warren itself: later runs find the image local.
        service = self.client.create_service(self.spec("prepull", 1))
        self.wait_running(service.id, 1, time.perf_counter(), timeout=120)
        self.remove_service(service.id)
        # The floor's namespace gets the same image (same blobs) with ctr.
        Ctr(self.containerd, self.floor_ns)("images", "pull", "--plain-http", self.image)

    def node_ready(self) -> bool:
        assert self.client is not None and self.manager is not None and self.manager.child
        self.manager.child.check_alive()
        return any(node.status == NodeStatus.READY for node in self.client.list_nodes())

    def spec(self, name: str, replicas: int) -> ServiceSpec:
        return ServiceSpec(
            name=name,
            container=ContainerSpec(image=self.image, args=COMMAND, init=True),
            replicas=replicas,
        )

    # -- Warren ------------------------------------------------------------------------

    def wait_running(self, service_id: str, count: int, started: float, timeout: float) -> float:
        """Poll the API every POLL s until ``count`` tasks run; seconds since ``started``."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while True:
            tasks = self.client.list_tasks(service=service_id)
            now = time.perf_counter()
            self.task_ids.update(t.id for t in tasks)
            current = [t for t in tasks if t.desired_state == TaskState.RUNNING]
            running = sum(1 for t in current if t.status.state == TaskState.RUNNING)
            if running >= count:
                return now - started
            failed = [t for t in current if t.status.state.is_terminal]
            if failed:
                status = failed[0].status
                raise RuntimeError(f"task {failed[0].name} {status.state}: {status.err}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{running}/{count} tasks running after {timeout:g}s")
            time.sleep(POLL)

    def remove_service(self, service_id: str) -> float:
        """Delete it; seconds until its containers are gone from containerd."""
        assert self.client is not None
        ctr = Ctr(self.containerd, self.warren_ns)
        started = time.perf_counter()
        self.client.delete_service(service_id)
        wait_for(lambda: not ctr.containers(), 120, "the service's containers to go", 0.05)
        return time.perf_counter() - started

    def warren_run(self, run: int, cpu: CpuSplit) -> dict[str, float]:
        assert self.client is not None and self.manager is not None
        first, scaled = self.settings.first, self.settings.scaled
        figures: dict[str, float] = {}
        cpu.start()
        started = time.perf_counter()
        service = self.client.create_service(self.spec(f"bench-{run}", first))
        figures["a"] = self.wait_running(service.id, first, started, timeout=120)
        self.cpu["a"].append(cpu.stop())
        cpu.start()
        started = time.perf_counter()
        self.client.scale_service(service.id, scaled)
        figures["b"] = self.wait_running(service.id, scaled, started, timeout=300)
        self.cpu["b"].append(cpu.stop())
        figures["rss"] = rss_mib(self.manager.pid)
        figures["rm"] = self.remove_service(service.id)
        return figures

    # -- the floor: ctr run -d ----------------------------------------------------------

    def floor_run(self, run: int, count: int) -> float:
        ctr = Ctr(self.containerd, self.floor_ns)
        ids = [f"floor-{run}-{count}-{i}" for i in range(count)]
        runc_root = str(self.containerd.runc_root)
        try:
            started = time.perf_counter()
            procs = [
                subprocess.Popen(
                    ctr.argv(
                        "run", "-d", "--null-io", "--runc-root", runc_root,
                        "--cgroup", f"/{self.floor_ns}/{cid}",
                        self.image, cid, *COMMAND,
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                for cid in ids
            ]  # fmt: skip
            errors = [p.communicate(timeout=120)[1] for p in procs]
            ended = time.perf_counter()
            if any(p.returncode for p in procs):
                raise RuntimeError(f"ctr run failed: {next(e for e in errors if e).decode()}")
            # `ctr run -d` returns once the task started: confirm, polling if need be.
            while not all(ctr.task_states().get(cid) == "RUNNING" for cid in ids):
                if time.perf_counter() - started > 120:
                    raise TimeoutError("floor containers not RUNNING after 120s")
                time.sleep(POLL)
                ended = time.perf_counter()
            return ended - started
        finally:
            self.floor_cleanup(ctr)

    def floor_cleanup(self, ctr: Ctr) -> None:
        ids = ctr.containers()
        if not ids:
            return
        kills = [
            subprocess.Popen(ctr.argv("task", "kill", "-s", "KILL", cid), stderr=subprocess.DEVNULL)
            for cid, state in ctr.task_states().items()
            if state != "STOPPED"
        ]
        for proc in kills:
            proc.wait(timeout=60)
        wait_for(
            lambda: all(s == "STOPPED" for s in ctr.task_states().values()),
            60,
            "the floor's tasks to stop",
            0.05,
        )
        ctr("containers", "rm", *ids)
        if ctr.containers():
            raise RuntimeError(f"floor containers left: {ctr.containers()}")

    # -- teardown ---------------------------------------------------------------------

    def cgroup_parents(self) -> Iterable[Path]:
        for name in ("warren", self.floor_ns):
            yield from CGROUP_ROOT.glob(f"*/{name}")

    def clear_workloads(self) -> None:
        """Before the manager stops: its services removed, the floor's containers too."""
        if self.client is not None and self.manager is not None and self.manager.child:
            with contextlib.suppress(Exception):
                if self.manager.child.alive:
                    for service in self.client.list_services():
                        self.remove_service(service.id)
            self.client.close()
        if self.containerd.running():
            with contextlib.suppress(Exception):
                self.floor_cleanup(Ctr(self.containerd, self.floor_ns))
            with contextlib.suppress(Exception):
                self.task_ids.update(Ctr(self.containerd, self.warren_ns).containers())

    def teardown(self) -> None:
        """After the manager stopped: the registry, containerd, and what they left."""
        try:
            if self.registry is not None:
                self.registry.stop()
        finally:
            self.containerd.stop()
            self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """Network namespaces of our tasks, and cgroup parents we caused (if empty)."""
        for task_id in self.task_ids:
            if (NETNS_DIR / f"warren-{task_id}").exists():
                subprocess.run(["ip", "netns", "delete", f"warren-{task_id}"], check=False)
        for cgroup in set(self.cgroup_parents()) - self.cgroups_before:
            with contextlib.suppress(OSError):
                cgroup.rmdir()


# -- report ------------------------------------------------------------------------------


def spread(values: list[float]) -> tuple[str, str, str]:
    return (f"{min(values):.2f}", f"{statistics.median(values):.2f}", f"{max(values):.2f}")


def report(
    settings: Settings,
    loads: tuple[float, float],
    warren: list[dict[str, float]],
    floor: dict[int, list[float]],
    cpu: dict[str, list[CpuUse]],
) -> None:
    first, scaled = settings.first, settings.scaled
    print(
        f"\nContainer start on containerd {containerd_version()}: one-node Warren cluster "
        f"(the manager's agent runs the tasks), busybox `sleep 3600` with --init, "
        f"{settings.runs} run(s)."
    )
    print(
        "Image pulled once before the runs (1-replica service created and removed): the runs "
        "time starting containers, not pulling.\nWarren times: gRPC client "
        f"(warren.cli.client.WarrenClient), from just before the call until ListTasks, polled "
        f"every {POLL * 1000:.0f} ms, shows all tasks running.\n"
        f"Floor: {first} / {scaled} concurrent `ctr run -d --null-io` (image pulled, one ctr "
        "process per container), until all returned and `ctr tasks ls` shows them RUNNING.\n"
    )
    column = "runs" if settings.runs > 1 else "run"
    rows = [
        [
            f"A. service create, {first} replicas",
            *spread([w["a"] for w in warren]),
            f"{statistics.median(floor[first]):.2f}",
            f"{SWARM['a']:.2f}" if first == 3 else "-",
        ],
        [
            f"B. service scale {first} -> {scaled}",
            *spread([w["b"] for w in warren]),
            f"{statistics.median(floor[scaled]):.2f}",
            f"{SWARM['b']:.2f}" if scaled == 30 else "-",
        ],
        [
            f"   service rm ({scaled}, until ctr lists none)",
            *spread([w["rm"] for w in warren]),
            "-",
            "-",
        ],
    ]
    headers = ["step (seconds)", "Warren min", "median", "max", f"ctr floor median ({column})"]
    print_table([*headers, "Docker Swarm"], rows)
    print(
        f"\nThe floor's B row starts {scaled} containers from none; Warren's B starts "
        f"{scaled - first} next to {first} running."
    )
    print(f"{SWARM_NOTE}.")
    if settings.quick:
        print("(--quick: scaled to 10, not 30, so step B is not comparable with Swarm's figure)")
    rss = [w["rss"] for w in warren]
    print(
        f"manager RSS (manager + agent, one process) after the {scaled}-replica step: "
        f"{rss[-1]:.1f} MiB (last run; {min(rss):.1f}-{max(rss):.1f} MiB over the runs)"
    )
    for step, label in (("a", "A"), ("b", "B")):
        uses = cpu[step]
        print(
            f"CPU use during Warren step {label}, median over runs (of {os.cpu_count()} CPUs): "
            f"manager process {statistics.median(u.manager for u in uses):.2f}, all benchmark "
            f"processes {statistics.median(u.ours for u in uses):.2f}, kernel threads "
            f"{statistics.median(u.kernel for u in uses):.2f}; other processes "
            f"{statistics.median(u.others for u in uses):.2f} "
            f"(max {max(u.others for u in uses):.2f})"
        )
    print(
        f"1-minute load average: {loads[0]:.2f} before setup, {loads[1]:.2f} when the measured "
        "runs started (setup itself raises it)"
    )


def containerd_version() -> str:
    result = subprocess.run(["containerd", "--version"], capture_output=True, text=True)
    parts = result.stdout.split()
    return parts[2] if len(parts) >= 3 else "?"


# -- main --------------------------------------------------------------------------------


def run(settings: Settings, root: Path) -> None:
    missing = missing_binaries() + (["root privileges"] if os.geteuid() != 0 else [])
    if missing:
        raise SystemExit("container_start.py needs: " + ", ".join(missing))
    load = wait_until_quiet(settings.wait)
    bench = Bench(settings, root)
    try:
        bench.prepare()
        with one_node_manager(root, runtime_args=bench.runtime_args()) as manager:
            try:
                bench.setup(manager)
                measure(settings, bench, manager, load)
            finally:
                bench.clear_workloads()
    finally:
        bench.teardown()


def measure(settings: Settings, bench: Bench, manager: Manager, load_before: float) -> None:
    loads = (load_before, load_1min())
    print(f"setup done; 1-minute load now {loads[1]:.2f}", flush=True)
    roots = {os.getpid(), manager.pid, bench.containerd.pid}
    cpu = CpuSplit(roots, manager.pid, str(bench.containerd.socket))
    warren: list[dict[str, float]] = []
    floor: dict[int, list[float]] = {settings.first: [], settings.scaled: []}
    for run in range(1, settings.runs + 1):
        warren.append(bench.warren_run(run, cpu))
        for count in floor:
            floor[count].append(bench.floor_run(run, count))
        w, others = warren[-1], [bench.cpu[step][-1].others for step in ("a", "b")]
        print(
            f"run {run}: A {w['a']:.2f}s  B {w['b']:.2f}s  rm {w['rm']:.2f}s  floor "
            + "  ".join(f"{c}: {v[-1]:.2f}s" for c, v in floor.items())
            + f"  (other processes' CPUs during A {others[0]:.2f}, B {others[1]:.2f})",
            flush=True,
        )
    report(settings, loads, warren, floor, bench.cpu)


def main() -> int:
    settings = parse_args()
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        run(settings, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
