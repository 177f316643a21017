#!/usr/bin/env python3
"""Scheduling throughput: 100 sim workers, 1,000 services x 10 replicas.

One manager with availability drain (every task goes to the workers), the
workers spread over a few processes (``sim_workers.py``). Once every worker
is ready, the services are created over REST with 20 requests in flight; the
metrics endpoint is polled every 0.5 s to time "all assigned" (tasks in
assigned or a later active state) and "all running".

    .venv/bin/python bench/scheduler.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field

import aiohttp
from benchkit import (
    ASSIGNED_OR_LATER,
    BENCH_DIR,
    PYTHON,
    Child,
    CpuMeter,
    Manager,
    one_node_manager,
    parse_metrics,
    print_table,
    ready_workers,
    scrape,
    stop_all,
    task_counts,
    wait_for,
)

POLL_PERIOD = 0.5
# The whole run must end in ~6 minutes; convergence gets what is left of this.
BUDGET_SECONDS = 330.0
JOIN_TIMEOUT = 120.0


@dataclass(frozen=True)
class Settings:
    workers: int
    processes: int
    services: int
    replicas: int
    in_flight: int

    @property
    def tasks(self) -> int:
        return self.services * self.replicas


@dataclass
class Sample:
    at: float  # seconds since the first create
    created: int  # services created so far
    counts: dict[str, int]

    @property
    def assigned(self) -> int:
        return sum(self.counts.get(state, 0) for state in ASSIGNED_OR_LATER)

    @property
    def running(self) -> int:
        return self.counts.get("running", 0)


@dataclass
class Run:
    join_seconds: float = 0.0
    created: int = 0
    create_errors: list[str] = field(default_factory=list)
    create_seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    all_assigned: float | None = None
    all_running: float | None = None
    timed_out: bool = False


def parse_args() -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 workers, 200 services x 10")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--processes", type=int)
    parser.add_argument("--services", type=int)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=20)
    args = parser.parse_args()
    workers, processes, services = (20, 2, 200) if args.quick else (100, 4, 1000)
    return Settings(
        workers=args.workers or workers,
        processes=args.processes or processes,
        services=args.services or services,
        replicas=args.replicas,
        in_flight=args.in_flight,
    )


# -- setup ---------------------------------------------------------------------------


def start_workers(settings: Settings, manager: Manager, token: str) -> list[Child]:
    """``settings.workers`` sim workers spread evenly over ``settings.processes``."""
    children: list[Child] = []
    per_process, extra = divmod(settings.workers, settings.processes)
    first = 0
    for p in range(settings.processes):
        count = per_process + (1 if p < extra else 0)
        args = [PYTHON, str(BENCH_DIR / "sim_workers.py"), "--count", str(count)]
        args += ["--first", str(first), "--manager", manager.api_address, "--token", token]
        args += ["--data-dir", str(manager.root / "workers")]
        child = Child(f"workers-{p}", args, manager.root / f"workers-{p}.log")
        child.start()
        children.append(child)
        first += count
    return children


def wait_workers_ready(settings: Settings, manager: Manager, workers: list[Child]) -> float:
    started = time.monotonic()

    def all_ready() -> bool:
        for child in workers:
            child.check_alive()
        return ready_workers(scrape(manager.metrics_url)) >= settings.workers

    wait_for(all_ready, JOIN_TIMEOUT, f"{settings.workers} ready workers", interval=0.5)
    return time.monotonic() - started


# -- the measured phase ----------------------------------------------------------------


async def create_services(
    session: aiohttp.ClientSession, manager: Manager, settings: Settings, run: Run
) -> None:
    """Create every service, ``settings.in_flight`` requests at a time."""
    gate = asyncio.Semaphore(settings.in_flight)
    url = f"{manager.rest_url}/v1/services"

    async def create(i: int) -> None:
        spec = {
            "name": f"svc-{i:04d}",
            "container": {"image": "busybox"},
            "replicas": settings.replicas,
        }
        async with gate:
            try:
                async with session.post(url, json=spec) as resp:
                    body = await resp.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                run.create_errors.append(f"{type(exc).__name__}: {exc}")
                return
        if resp.status == 201:
            run.created += 1
        else:
            run.create_errors.append(f"HTTP {resp.status}: {body[:160]}")

    await asyncio.gather(*(create(i) for i in range(settings.services)))


async def poll_metrics(
    manager: Manager, settings: Settings, run: Run, t0: float, deadline: float
) -> None:
    """Sample task states until every created task runs, or the deadline passes."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_PERIOD)
            try:
                async with session.get(manager.metrics_url) as resp:
                    counts = task_counts(parse_metrics(await resp.text()))
            except (aiohttp.ClientError, TimeoutError):
                continue  # a busy manager may miss a scrape; the next one counts
            sample = Sample(time.monotonic() - t0, run.created, counts)
            run.samples.append(sample)
            if not run.create_seconds:
                continue  # the target is known once every create has answered
            expected = max(1, run.created * settings.replicas)
            if run.all_assigned is None and sample.assigned >= expected:
                run.all_assigned = sample.at
            if sample.running >= expected:
                run.all_running = sample.at
                return
    run.timed_out = True


async def measure(settings: Settings, manager: Manager, deadline: float) -> Run:
    run = Run()
    connector = aiohttp.TCPConnector(ssl=manager.ssl_context(), limit=settings.in_flight)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.monotonic()
        poller = asyncio.create_task(poll_metrics(manager, settings, run, t0, deadline))
        try:
            creating = create_services(session, manager, settings, run)
            await asyncio.wait_for(creating, max(1.0, deadline - time.monotonic()))
            run.create_seconds = time.monotonic() - t0
        except TimeoutError:
            run.timed_out = True
            poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
    return run


# -- report ------------------------------------------------------------------------------


def session_drops(workers: list[Child]) -> int:
    """Agent sessions that ended while the workers ran (each one reconnects)."""
    drops = 0
    for child in workers:
        text = child.log_path.read_text(errors="replace") if child.log_path.exists() else ""
        drops += sum(1 for line in text.splitlines() if '"msg": "session with' in line)
    return drops


def seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f} s"


def rate(count: int, elapsed: float | None) -> str:
    return "-" if not elapsed else f"{count / elapsed:,.0f} /s"


def print_timeline(samples: list[Sample], rows: int = 12) -> None:
    step = max(1, len(samples) // rows)
    picked = samples[::step]
    if samples and picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    print("\ntimeline (metrics samples, seconds since the first create):")
    print_table(
        ["t s", "services", "tasks", "assigned+", "running"],
        [[f"{s.at:.1f}", s.created, sum(s.counts.values()), s.assigned, s.running] for s in picked],
    )


def report(
    settings: Settings,
    run: Run,
    manager: Manager,
    workers: list[Child],
    cpu: dict[str, float],
    cpu_note: str,
) -> None:
    tasks = run.created * settings.replicas
    print(
        f"\nWarren scheduler: 1 manager (availability drain) + {settings.workers} sim "
        f"workers in {settings.processes} processes; {settings.services} services x "
        f"{settings.replicas} replicas = {settings.tasks:,} tasks; creates over REST with "
        f"{settings.in_flight} in flight; metrics polled every {POLL_PERIOD} s\n"
    )
    worker_rss = [w.rss_mib() for w in workers]
    manager_rss = manager.child.rss_mib() if manager.child else float("nan")
    rows = [
        ["workers joined and ready", f"{run.join_seconds:.1f} s"],
        ["services created / errors", f"{run.created} / {len(run.create_errors)}"],
        ["create phase (all POSTs answered)", seconds(run.create_seconds or None)],
        ["create rate", rate(run.created, run.create_seconds)],
        [f"all {tasks:,} tasks assigned (from first create)", seconds(run.all_assigned)],
        ["placements per second (to all assigned)", rate(tasks, run.all_assigned)],
        [f"all {tasks:,} tasks running (from first create)", seconds(run.all_running)],
        ["tasks running per second (to all running)", rate(tasks, run.all_running)],
        ["manager CPU during the measured phase", f"{cpu['manager']:.1f} s"],
        [
            "worker processes CPU during the measured phase",
            f"{sum(cpu[w.name] for w in workers):.1f} s",
        ],
        ["worker sessions dropped and reopened", str(session_drops(workers))],
        ["manager RSS at the end", f"{manager_rss:.1f} MiB"],
        [
            f"worker processes RSS ({len(workers)} processes)",
            " + ".join(f"{r:.0f}" for r in worker_rss) + f" = {sum(worker_rss):.0f} MiB",
        ],
        ["worker RSS per simulated worker", f"{sum(worker_rss) / settings.workers:.1f} MiB"],
    ]
    print_table(["figure", "value"], rows)
    print_timeline(run.samples)
    print(f"\n{cpu_note}")
    if run.create_errors:
        print(f"\nfirst create errors: {run.create_errors[:3]}")
    if run.timed_out:
        last = run.samples[-1] if run.samples else Sample(0.0, run.created, {})
        print(
            f"\nNOTE: not converged within the time budget ({BUDGET_SECONDS:.0f} s for the "
            f"whole run): at {last.at:.1f} s {last.assigned:,} of {tasks:,} tasks were "
            f"assigned and {last.running:,} running. The figures above are partial."
        )


# -- main ----------------------------------------------------------------------------------


def run_benchmark(settings: Settings, manager: Manager, started: float) -> None:
    workers: list[Child] = []
    try:
        workers = start_workers(settings, manager, manager.join_token())
        join_seconds = wait_workers_ready(settings, manager, workers)
        children = [c for c in (manager.child, *workers) if c is not None]
        cpu_before = {c.name: c.cpu_seconds() for c in children}
        meter = CpuMeter([c.popen.pid for c in children if c.popen is not None])
        run = asyncio.run(measure(settings, manager, started + BUDGET_SECONDS))
        run.join_seconds = join_seconds
        cpu_note = meter.note()
        cpu = {c.name: c.cpu_seconds() - cpu_before[c.name] for c in children}
        report(settings, run, manager, workers, cpu, cpu_note)
    except BaseException:
        # one_node_manager prints the manager's own.
        for child in workers:
            print(f"--- {child.name} log tail:\n{child.tail()}", file=sys.stderr)
        raise
    finally:
        stop_all(workers)


def main() -> int:
    started = time.monotonic()
    settings = parse_args()
    with one_node_manager(availability="drain") as manager:
        run_benchmark(settings, manager, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
