#!/usr/bin/env python3
"""Memory of one manager: RSS (and PSS) of its process and every child it started.

One manager started as a user would (`warren cluster init`, sim runtime,
availability drain), measured idle once it leads, and again once the store
holds 1,000 services x 10 replicas = 10,000 tasks (created over REST, 20 in
flight). Memory is summed over the manager's process tree from /proc
(``proctree.py``): an etcd member is a child of the manager process, so it is
counted with it; PSS splits the pages the processes share. Each figure is the
median of samples taken every 0.5 s for 3 s, 5 s after the phase's end.

By default no worker joins, so the 10,000 tasks stay pending (a drained
manager places none): the store, the log and the controllers hold them, and
the run takes about a minute. ``--workers N`` runs them on N sim workers
(``sim_workers.py``, as ``scheduler.py`` does), measured once all run or when
``--budget`` is spent (the task states reached are printed beside the figure).
On a 2-CPU machine shared with other test suites that did not converge: the
starved workers were declared down and their tasks orphaned and placed again.

PySyncObj baseline, measured with this script on 2026-12-02 at commit e04f2a5
(PySyncObj; b8b1bbd wired etcd in later), 2 CPUs shared with other test
suites, medians of 3 runs (RSS within 0.3 MiB of each other):

    idle, just led                        89.3 MiB RSS
    1,000 services x 10 = 10,000 tasks   190.6 MiB RSS  (pending, no worker)
    idle, 10 sim workers joined           91.8 MiB RSS  (1 run, --workers 10)

The tree was the manager process alone: PySyncObj runs in it (a snapshot
child exists only while a snapshot is written). PSS was 56-69 MiB idle and
155-169 MiB with the tasks: it moves with whatever else maps the same
libraries (other Python processes), so compare RSS across runs.

    .venv/bin/python bench/memory.py [--services N] [--replicas N]
        [--workers N] [--processes N] [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from dataclasses import dataclass

import aiohttp
from benchkit import Child, Manager, one_node_manager, print_table, scrape, stop_all, task_counts
from proctree import consensus_backend, describe, total_pss_mib, total_rss_mib, tree
from scheduler import Settings, start_workers, wait_workers_ready
from support import holds_within

# The PySyncObj figures this script measured (see the docstring), MiB of RSS.
BASELINE_DATE = "2026-12-02"
PYSYNCOBJ_IDLE_MIB = 89.3
PYSYNCOBJ_TEN_WORKERS_MIB = 91.8
PYSYNCOBJ_TASKS_MIB = 190.6  # 1,000 x 10 pending tasks, no worker
SETTLE_SECONDS = 5.0
SAMPLE_SECONDS = 3.0
SAMPLE_PERIOD = 0.5


@dataclass
class Figure:
    phase: str
    label: str
    rss_mib: float
    pss_mib: float
    processes: str  # one line per process of the tree, last sample
    note: str = ""


def parse_args() -> tuple[Settings, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0, help="sim workers, default none")
    parser.add_argument("--processes", type=int, default=1, help="processes they run in")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--budget", type=float, default=150.0, help="seconds to converge")
    args = parser.parse_args()
    settings = Settings(args.workers, args.processes, args.services, args.replicas, 20)
    return settings, args.budget


def sample(manager: Manager, phase: str, label: str, note: str = "") -> Figure:
    """Median RSS and PSS of the manager's tree over SAMPLE_SECONDS, after settling."""
    time.sleep(SETTLE_SECONDS)
    rss, pss = [], []
    members = tree(manager.pid)
    for _ in range(int(SAMPLE_SECONDS / SAMPLE_PERIOD)):
        manager.child.check_alive()  # type: ignore[union-attr]
        members = tree(manager.pid)
        rss.append(total_rss_mib(members))
        pss.append(total_pss_mib(members))
        time.sleep(SAMPLE_PERIOD)
    return Figure(
        phase, label, statistics.median(rss), statistics.median(pss), describe(members), note
    )


def states(manager: Manager) -> str:
    counts = task_counts(scrape(manager.metrics_url))
    return ", ".join(f"{n:,} {state}" for state, n in sorted(counts.items()) if n) or "no tasks"


async def create_all(settings: Settings, manager: Manager) -> tuple[int, list[str]]:
    """Every service, ``settings.in_flight`` creates at a time; a refused create
    is tried again (up to 3 times), so the store ends with every task.
    Returns the services created and the errors met on the way."""
    gate = asyncio.Semaphore(settings.in_flight)
    errors: list[str] = []
    url = f"{manager.rest_url}/v1/services"

    async def create(session: aiohttp.ClientSession, i: int) -> bool:
        spec = {
            "name": f"svc-{i:04d}",
            "container": {"image": "busybox"},
            "replicas": settings.replicas,
        }
        for _ in range(3):
            async with gate:
                try:
                    async with session.post(url, json=spec) as resp:
                        body = await resp.text()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
            if resp.status == 201:
                return True
            # A create that timed out may have committed after all.
            if resp.status == 409 and "already exists" in body:
                return True
            errors.append(f"HTTP {resp.status}: {body[:160]}")
        return False

    connector = aiohttp.TCPConnector(ssl=manager.ssl_context(), limit=settings.in_flight)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        done = await asyncio.gather(*(create(session, i) for i in range(settings.services)))
    return sum(done), errors


def converged(manager: Manager, expected: int, on_workers: bool) -> bool:
    """Every task running on the workers; without workers, every task created
    (they stay pending: a drained manager places none)."""
    try:
        counts = task_counts(scrape(manager.metrics_url))
    except OSError:
        return False  # a busy manager may miss a scrape
    return (counts.get("running", 0) if on_workers else sum(counts.values())) >= expected


async def create_within(
    settings: Settings, manager: Manager, seconds: float
) -> tuple[int, list[str], bool]:
    """create_all, given up after ``seconds``; the last item: whether it finished."""
    try:
        async with asyncio.timeout(seconds):
            created, errors = await create_all(settings, manager)
            return created, errors, True
    except TimeoutError:
        return 0, [], False


def with_tasks(settings: Settings, manager: Manager, budget: float) -> Figure:
    started = time.monotonic()
    created, errors, finished = asyncio.run(create_within(settings, manager, budget))
    label = f"{settings.services:,} services x {settings.replicas} = {settings.tasks:,} tasks"
    if not finished:
        note = f"NOT all services created within {budget:g} s; tasks: {states(manager)}"
        return sample(manager, "tasks", label, note)
    expected = created * settings.replicas
    on_workers = settings.workers > 0
    goal = "running" if on_workers else "created (pending: no worker to run them)"
    remaining = max(1.0, started + budget - time.monotonic())
    reached = holds_within(lambda: converged(manager, expected, on_workers), remaining)
    elapsed = time.monotonic() - started
    if reached:
        note = f"all {expected:,} tasks {goal} {elapsed:.1f} s after the first create"
    else:
        note = f"NOT all {expected:,} tasks {goal} within {budget:g} s"
    note += f"; tasks: {states(manager)}"
    if errors:
        note += f"; {len(errors)} creates refused and tried again, first: {errors[0]}"
    if created < settings.services:
        note += f"; only {created:,} services created"
    return sample(manager, "tasks", label, note)


def baseline(phase: str, settings: Settings) -> float:
    """The PySyncObj figure of the same phase, when it was measured with these settings."""
    if phase == "idle":
        return PYSYNCOBJ_IDLE_MIB
    if phase == "workers" and settings.workers == 10:
        return PYSYNCOBJ_TEN_WORKERS_MIB
    as_measured = (settings.services, settings.replicas, settings.workers) == (1000, 10, 0)
    if phase == "tasks" and as_measured:
        return PYSYNCOBJ_TASKS_MIB
    return math.nan


def report(settings: Settings, backend: str, figures: list[Figure]) -> None:
    print(
        f"\nManager memory, backend {backend}: one manager (`warren cluster init`, sim, "
        f"drained), {settings.workers} sim workers in {settings.processes} process(es); "
        f"sum over the manager's process tree (median of {SAMPLE_SECONDS:g} s of samples)\n"
    )
    rows = []
    for f in figures:
        before = baseline(f.phase, settings)
        rows.append(
            [
                f.label,
                f"{f.rss_mib:.1f}",
                f"{f.pss_mib:.1f}",
                "-" if math.isnan(before) else f"{before:.1f}",
            ]
        )
    print_table(["phase", "RSS MiB", "PSS MiB", f"PySyncObj RSS MiB ({BASELINE_DATE})"], rows)
    for f in figures:
        print(f"\n{f.label}{': ' + f.note if f.note else ''}\n{f.processes}")


def main() -> int:
    settings, budget = parse_args()
    figures: list[Figure] = []
    with one_node_manager(availability="drain", runtime_args=["--runtime", "sim"]) as manager:
        backend = consensus_backend(manager.pid)
        figures.append(sample(manager, "idle", "idle, just led"))
        workers: list[Child] = []
        try:
            if settings.workers:
                workers = start_workers(settings, manager, manager.join_token())
                wait_workers_ready(settings, manager, workers)
                label = f"idle, {settings.workers} workers joined"
                figures.append(sample(manager, "workers", label))
            figures.append(with_tasks(settings, manager, budget))
        except BaseException:
            for child in workers:
                print(f"--- {child.name} log tail:\n{child.tail()}", file=sys.stderr)
            raise
        finally:
            stop_all(workers)
    report(settings, backend, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
