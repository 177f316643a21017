#!/usr/bin/env python3
"""Write throughput: REST service creates, 20 in flight, on 1 and on 3 managers.

For each cluster size, drained managers are started as a user would (`warren
cluster init`, `warren manager join`: ``clusters.py``), and one asyncio client
with the admin mTLS identity keeps ``--in-flight`` creates of new services
(0 replicas by default, so each create is one write and no task writes
compete with it) in flight against the leader's REST API for ``--seconds``
after a warm-up. An accepted write is a 201 answer; afterwards the leader's
service list must hold every service it accepted (else the run fails). Prints
accepted writes/s and latency beside the figures issue 10 gives: today about
50-70/s (PySyncObj), target >= 500/s. The managers are driven only through
the CLI and the APIs, so this measures whatever consensus backend they run.

Scheduling 1,000 services x 10 tasks on 100 sim workers is `bench/scheduler.py`
(issue 10: today 21.8 s, target <= 10 s); it runs for up to 6 minutes, so it
is not repeated here:

    .venv/bin/python bench/scheduler.py            # 100 workers, 10,000 tasks
    .venv/bin/python bench/writes.py [--managers 1,3] [--seconds S] [--in-flight N]
        [--replicas R]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from benchkit import CpuMeter, client_ssl_context, cpu_seconds, percentile, print_table
from clusters import Cluster, leader_process, manager_pid, running_cluster, wait_for
from proctree import consensus_backend, descendants

TODAY = "about 50-70/s (PySyncObj)"
TARGET_PER_SECOND = 500.0
WARMUP_SECONDS = 2.0


@dataclass(frozen=True)
class Settings:
    managers: list[int]
    seconds: float
    in_flight: int
    replicas: int


@dataclass
class Run:
    managers: int
    backend: str = ""
    accepted: int = 0  # 201s over the whole run, warm-up included
    latencies: list[float] = field(default_factory=list)  # ms, answered in the window
    errors: dict[str, int] = field(default_factory=dict)
    first_errors: dict[str, str] = field(default_factory=dict)  # by kind: the first one
    listed: int = 0
    manager_cpu: float = 0.0  # CPUs, all manager processes and their children
    cpu_note: str = ""

    def error(self, key: str, detail: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1
        self.first_errors.setdefault(key, detail)


def parse_args() -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--managers", default="1,3", help="cluster sizes, default 1,3")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured, after warm-up")
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=0, help="of each created service")
    args = parser.parse_args()
    sizes = [int(n) for n in args.managers.split(",")]
    return Settings(sizes, args.seconds, args.in_flight, args.replicas)


async def create_for(
    session: aiohttp.ClientSession, base: str, settings: Settings, run: Run, prefix: str
) -> None:
    """``settings.in_flight`` loops, each creating services back to back; the
    writes answered inside the measured window are its throughput."""
    names = itertools.count()
    measured_from = time.monotonic() + WARMUP_SECONDS
    end = measured_from + settings.seconds

    async def loop() -> None:
        while (started := time.monotonic()) < end:
            spec = {
                "name": f"{prefix}-{next(names):06d}",
                "container": {"image": "busybox"},
                "replicas": settings.replicas,
            }
            try:
                async with session.post(f"{base}/v1/services", json=spec) as resp:
                    status = resp.status
                    body = await resp.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                run.error(type(exc).__name__, str(exc))
                continue
            done = time.monotonic()
            if status != 201:
                run.error(f"HTTP {status}", body[:160])
                continue
            run.accepted += 1
            if measured_from <= done <= end:
                run.latencies.append((done - started) * 1000)

    await asyncio.gather(*(loop() for _ in range(settings.in_flight)))


async def count_listed(session: aiohttp.ClientSession, base: str, prefix: str) -> int:
    async with session.get(f"{base}/v1/services") as resp:
        resp.raise_for_status()
        services = await resp.json()
    return sum(1 for s in services if s["spec"]["name"].startswith(f"{prefix}-"))


async def drive(cluster: Cluster, leader: str, settings: Settings, run: Run) -> None:
    base = f"https://127.0.0.1:{cluster.manager_ports[leader]['rest']}"
    connector = aiohttp.TCPConnector(
        ssl=client_ssl_context(cluster.config_dir), limit=settings.in_flight
    )
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await create_for(session, base, settings, run, "w")
        run.listed = await count_listed(session, base, "w")


def tree_cpu(pids: list[int]) -> float:
    return float(sum(cpu_seconds(p) for root in pids for p in descendants(root)))


def measure(managers: int, settings: Settings) -> Run:
    run = Run(managers)
    with (
        tempfile.TemporaryDirectory(prefix="warren-writes-") as tmp,
        running_cluster(Path(tmp), managers) as cluster,
    ):
        run.backend = consensus_backend(manager_pid(cluster))
        leader = wait_for(lambda: leader_process(cluster), 30, "a leader")
        roots = [manager_pid(cluster, name) for name in cluster.processes]
        # Children too: an etcd member is not "other processes".
        meter = CpuMeter([pid for root in roots for pid in descendants(root)])
        cpu_before, wall_before = tree_cpu(roots), time.monotonic()
        asyncio.run(drive(cluster, leader, settings, run))
        run.manager_cpu = (tree_cpu(roots) - cpu_before) / (time.monotonic() - wall_before)
        run.cpu_note = meter.note()
    run.latencies.sort()
    return run


def rate(run: Run, settings: Settings) -> float:
    """Accepted writes per second over the measured window."""
    return len(run.latencies) / settings.seconds


def report(settings: Settings, runs: list[Run]) -> bool:
    backends = ", ".join(sorted({r.backend for r in runs}))
    print(
        f"\nWrite throughput, backend {backends}: REST service creates ({settings.replicas} "
        f"replicas each) with {settings.in_flight} in flight to the leader, admin mTLS, "
        f"{settings.seconds:g} s measured after {WARMUP_SECONDS:g} s warm-up; drained "
        "managers on loopback\n"
    )
    rows = []
    for run in runs:
        lat = run.latencies
        figures = [f"{percentile(lat, p):.1f}" for p in (50, 99)] if lat else ["-", "-"]
        rows.append(
            [
                f"{run.managers} manager{'s' if run.managers > 1 else ''}",
                f"{rate(run, settings):.1f}",
                *figures,
                f"{run.accepted} / {run.listed}",
                sum(run.errors.values()),
                f"{run.manager_cpu:.2f}",
            ]
        )
    print_table(
        [
            "cluster",
            "accepted writes/s",
            "p50 ms",
            "p99 ms",
            "accepted / listed",
            "errors",
            "manager CPUs",
        ],
        rows,
    )
    print(f"\n  today (issue 10)   {TODAY}")
    verdicts = ", ".join(
        f"{r.managers} manager(s) {'met' if rate(r, settings) >= TARGET_PER_SECOND else 'NOT met'}"
        for r in runs
    )
    print(f"  target (issue 10)  >= {TARGET_PER_SECOND:g}/s: {verdicts}")
    ok = True
    for run in runs:
        if run.errors:
            print(f"  {run.managers} manager(s): errors {run.errors}, first: {run.first_errors}")
        if run.listed < run.accepted:
            ok = False
            print(
                f"  {run.managers} manager(s): FAILED: {run.accepted} creates accepted but "
                f"only {run.listed} services listed"
            )
        print(f"  {run.managers} manager(s): {run.cpu_note}")
    print(
        "\nScheduling 1,000 services x 10 tasks: `.venv/bin/python bench/scheduler.py` "
        "(issue 10: today 21.8 s, target <= 10 s)"
    )
    return ok


def main() -> int:
    settings = parse_args()
    runs = [measure(managers, settings) for managers in settings.managers]
    return 0 if report(settings, runs) else 1


if __name__ == "__main__":
    sys.exit(main())
