#!/usr/bin/env python3
"""REST API under load: 20 concurrent clients, mixed reads and writes.

One manager (sim runtime, availability active: its own agent runs the tasks).
Each client has its own keep-alive mTLS connection (admin certificate) and
its own service, and for a fixed time sends requests back to back: 4 in 5 are
reads (list services, list tasks, list nodes, inspect its service), 1 in 5 a
write (scale its service between 1 and 2 replicas). Prints requests/s and
p50/p95/p99 latency for reads and writes separately, the manager's CPU use and
RSS.

    .venv/bin/python bench/api_load.py [--quick] [--clients N] [--seconds S]
        [--profile FILE]   (the manager runs under cProfile; stats in FILE)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from benchkit import CpuMeter, Manager, one_node_manager, percentile, print_table

READS = ("/v1/services", "/v1/tasks", "/v1/nodes", "/v1/services/{name}")
WRITE_SHARE = 0.2


@dataclass(frozen=True)
class Settings:
    clients: int
    seconds: float
    warmup: float
    profile: Path | None


@dataclass
class Samples:
    reads: list[float] = field(default_factory=list)  # ms
    writes: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


def parse_args() -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s instead of 30 s")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--profile", type=Path, help="write the manager's cProfile stats here")
    args = parser.parse_args()
    seconds = args.seconds or (10.0 if args.quick else 30.0)
    return Settings(args.clients, seconds, min(3.0, seconds / 5), args.profile)


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, body: object = None
) -> tuple[int, bytes]:
    async with session.request(method, url, json=body) as response:
        return response.status, await response.read()


async def _client(
    index: int, manager: Manager, settings: Settings, samples: Samples, start: float
) -> None:
    """One client: its own connection and service; records only after warm-up."""
    name = f"load{index:02d}"
    base = manager.rest_url
    connector = aiohttp.TCPConnector(ssl=manager.ssl_context(), limit=1)
    rng = random.Random(index)
    async with aiohttp.ClientSession(connector=connector) as session:
        status, data = await _call(
            session,
            "POST",
            f"{base}/v1/services",
            {"name": name, "container": {"image": "busybox"}},
        )
        if status != 201:
            raise RuntimeError(f"creating {name}: HTTP {status} {data[:200]!r}")
        replicas = 1
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        measured_from = start + settings.warmup
        end = measured_from + settings.seconds
        while (now := time.monotonic()) < end:
            write = rng.random() < WRITE_SHARE
            if write:
                replicas = 3 - replicas
                status, data = await _call(
                    session, "POST", f"{base}/v1/services/{name}/scale", {"replicas": replicas}
                )
            else:
                path = rng.choice(READS).format(name=name)
                status, data = await _call(session, "GET", base + path)
            elapsed = (time.monotonic() - now) * 1000
            if now < measured_from:
                continue
            if status >= 300:
                key = f"HTTP {status}"
                samples.errors[key] = samples.errors.get(key, 0) + 1
            (samples.writes if write else samples.reads).append(elapsed)


async def load(manager: Manager, settings: Settings) -> Samples:
    samples = Samples()
    # Every client creates its service first, then all start together.
    start = time.monotonic() + 2.0
    await asyncio.gather(
        *(_client(i, manager, settings, samples, start) for i in range(settings.clients))
    )
    return samples


def report(settings: Settings, samples: Samples, rss: float, cpu_note: str) -> None:
    print(
        f"\nWarren REST under load: 1 manager (sim runtime), {settings.clients} concurrent "
        f"clients, one keep-alive mTLS connection each, {settings.seconds:g} s measured after "
        f"{settings.warmup:g} s warm-up; {100 - WRITE_SHARE * 100:.0f}% reads "
        f"({', '.join(READS)}), {WRITE_SHARE * 100:.0f}% writes (scale)\n"
    )
    rows = []
    for kind, values in (("reads", samples.reads), ("writes", samples.writes)):
        ordered = sorted(values)
        if not ordered:
            continue
        figures = [percentile(ordered, p) for p in (50, 95, 99)] + [ordered[-1]]
        rows.append(
            [
                kind,
                str(len(ordered)),
                f"{len(ordered) / settings.seconds:.1f}",
                *(f"{f:.1f}" for f in figures),
            ]
        )
    print_table(["kind", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows)
    total = len(samples.reads) + len(samples.writes)
    print(f"\ntotal: {total / settings.seconds:.1f} requests/s")
    if samples.errors:
        print(f"errors: {samples.errors}")
    print(f"manager RSS: {rss:.1f} MiB")
    print(cpu_note)


def run(settings: Settings, manager: Manager) -> None:
    assert manager.child is not None
    meter = CpuMeter([manager.pid])
    cpu_before, wall_before = manager.child.cpu_seconds(), time.monotonic()
    samples = asyncio.run(load(manager, settings))
    manager_cpu = (manager.child.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
    cpu_note = f"manager process: {manager_cpu:.2f} CPUs on average\n{meter.note()}"
    report(settings, samples, manager.child.rss_mib(), cpu_note)


def main() -> int:
    settings = parse_args()
    python_args = (
        [] if settings.profile is None else ["-m", "cProfile", "-o", str(settings.profile)]
    )
    with one_node_manager(availability="active", python_args=python_args) as manager:
        run(settings, manager)
    return 0


if __name__ == "__main__":
    sys.exit(main())
