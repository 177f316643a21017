#!/usr/bin/env python3
"""REST read latency of one manager holding 100 services and 1,000 running tasks.

One manager (sim runtime, availability active: the manager's own agent runs
all the tasks, so no worker is needed), 100 services x 10 replicas created
over REST, then sequential GET /v1/services and GET /v1/tasks on a single
keep-alive HTTPS connection with the admin client certificate.

    .venv/bin/python bench/api_latency.py [--quick] [--services N] [--replicas N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import zlib
from dataclasses import dataclass

from benchkit import (
    CpuMeter,
    Manager,
    one_node_manager,
    percentile,
    print_table,
    scrape,
    task_counts,
    wait_for,
)

DOCKER_REFERENCE = "Docker Swarm engine API GET /services p95 0.45 ms (same kind of 2-core machine)"
# Issue 8's targets at 100 services / 1,000 tasks, and the figures before it
# (100 services x 1 replica, generic dataclass-to-dict encoding).
TARGETS = {"/v1/services": 1.0, "/v1/tasks": 2.0}
BEFORE = {"/v1/services": 5.96, "/v1/tasks": 9.80}
# (path, ask for gzip): listings past 128 KiB are sent gzipped when the client
# accepts it (the timed request includes decompressing them).
ENDPOINTS = (("/v1/services", False), ("/v1/tasks", False), ("/v1/tasks", True))


@dataclass(frozen=True)
class Settings:
    services: int
    replicas: int
    warmup: int
    requests: int


def parse_args() -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 warm-up + 200 timed requests")
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=10, help="per service")
    args = parser.parse_args()
    if args.quick:
        return Settings(args.services, args.replicas, warmup=20, requests=200)
    return Settings(args.services, args.replicas, warmup=200, requests=2000)


def connect(manager: Manager) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", manager.ports["rest"], context=manager.ssl_context(), timeout=30
    )
    conn.connect()
    return conn


def request(
    conn: http.client.HTTPSConnection,
    method: str,
    path: str,
    body: object = None,
    gzip: bool = False,
) -> tuple[int, bytes, int]:
    """One request on the kept-alive connection; the body is read in full (and
    decompressed). Returns the status, the body and its size on the wire."""
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    if gzip:
        headers["Accept-Encoding"] = "gzip"
    conn.request(method, path, body=payload, headers=headers)
    response = conn.getresponse()
    data = response.read()
    sent = len(data)
    if response.getheader("Content-Encoding") == "gzip":
        data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
    return response.status, data, sent


def create_services(conn: http.client.HTTPSConnection, count: int, replicas: int) -> None:
    for i in range(count):
        spec = {"name": f"s{i:03d}", "container": {"image": "busybox"}, "replicas": replicas}
        status, data, _ = request(conn, "POST", "/v1/services", spec)
        if status != 201:
            raise RuntimeError(f"creating {spec['name']}: HTTP {status} {data[:200]!r}")


def running_tasks(manager: Manager) -> int:
    return task_counts(scrape(manager.metrics_url)).get("running", 0)


@dataclass(frozen=True)
class Timing:
    samples: list[float]  # ms, sorted
    size: int  # the last response's JSON
    sent: int  # the same on the wire


def time_endpoint(
    conn: http.client.HTTPSConnection, path: str, gzip: bool, warmup: int, count: int
) -> Timing:
    size = sent = 0
    for _ in range(warmup):
        request(conn, "GET", path, gzip=gzip)
    samples: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        status, data, sent = request(conn, "GET", path, gzip=gzip)
        samples.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status} {data[:200]!r}")
        size = len(data)
    return Timing(sorted(samples), size, sent)


def report(
    settings: Settings, results: dict[tuple[str, bool], Timing], rss: float, cpu_note: str
) -> None:
    print(
        f"\nWarren REST latency: 1 manager (sim runtime, availability active), "
        f"{settings.services} services x {settings.replicas} replicas running; one keep-alive mTLS "
        f"connection, {settings.warmup} warm-up + {settings.requests} timed sequential "
        "requests per endpoint\n"
    )
    rows = []
    for (path, gzip), timing in results.items():
        samples = timing.samples
        figures = [percentile(samples, p) for p in (50, 95, 99)] + [samples[-1]]
        rows.append(
            [
                f"GET {path}" + (" (gzip)" if gzip else ""),
                f"{timing.size / 1024:.1f}",
                f"{timing.sent / 1024:.1f}",
                *(f"{f:.2f}" for f in figures),
                f"{TARGETS[path]:.2f}",
                f"{BEFORE[path]:.2f}",
            ]
        )
    headers = ["endpoint", "JSON KiB", "sent KiB", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    print_table([*headers, "target p95", "before p95"], rows)
    print("(before: 100 services x 1 replica, generic dataclass-to-dict encoding)")
    print("(gzip: Accept-Encoding: gzip, as kube-apiserver serves lists past 128 KiB; the time")
    print(" includes decompressing; listings under 128 KiB are always sent plain)")
    print(f"\npeer figure: {DOCKER_REFERENCE}")
    print(f"manager RSS: {rss:.1f} MiB")
    print(cpu_note)


def run(settings: Settings, manager: Manager) -> None:
    conn = connect(manager)
    try:
        create_services(conn, settings.services, settings.replicas)
        total = settings.services * settings.replicas
        wait_for(
            lambda: running_tasks(manager) >= total,
            300,
            f"{total} running tasks",
            interval=0.5,
        )
        meter = CpuMeter([manager.pid])
        results = {
            (path, gzip): time_endpoint(conn, path, gzip, settings.warmup, settings.requests)
            for path, gzip in ENDPOINTS
        }
        cpu_note = meter.note()
    finally:
        conn.close()
    assert manager.child is not None
    report(settings, results, manager.child.rss_mib(), cpu_note)


def main() -> int:
    settings = parse_args()
    with one_node_manager(availability="active") as manager:
        run(settings, manager)
    return 0


if __name__ == "__main__":
    sys.exit(main())
