#!/usr/bin/env python3
"""The largest service allowed: does the manager stay responsive while it converges?

One manager (sim runtime, availability active: its own agent runs the tasks).
One service of MAX_REPLICAS replicas is created over REST; until every task
runs, a second connection reads GET /v1/services and GET /v1/nodes back to
back. Prints the time until all run, the read latencies meanwhile, whether the
manager's own node ever left `ready`, and the manager's RSS and stop time.

    .venv/bin/python bench/big_service.py [--replicas N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time

from benchkit import Manager, one_node_manager, percentile, print_table, scrape, task_counts

from warren.core.models import MAX_REPLICAS

# What issue 7 saw at 100,000 replicas before the cap: GETs 3-9 s, the
# manager's own node marked down, RSS 247 -> 737 MB, 20-50 s to stop.
BEFORE = "100,000 replicas before the cap: GETs 3-9 s, own node marked down, 20-50 s to stop"


def connect(manager: Manager) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", manager.ports["rest"], context=manager.ssl_context(), timeout=60
    )
    conn.connect()
    return conn


def get(conn: http.client.HTTPSConnection, path: str) -> bytes:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status} {body[:200]!r}")
    return body


def run(replicas: int, manager: Manager) -> None:
    try:
        writer, reader = connect(manager), connect(manager)
        spec = {"name": "big", "container": {"image": "busybox"}, "replicas": replicas}
        started = time.monotonic()
        writer.request("POST", "/v1/services", body=json.dumps(spec).encode())
        response = writer.getresponse()
        if response.status != 201:
            raise RuntimeError(f"create: HTTP {response.status} {response.read()[:200]!r}")
        response.read()
        samples: dict[str, list[float]] = {"/v1/services": [], "/v1/nodes": []}
        node_states: set[str] = set()
        running = 0
        while running < replicas and time.monotonic() - started < 600:
            for path, latencies in samples.items():
                t0 = time.perf_counter()
                body = get(reader, path)
                latencies.append((time.perf_counter() - t0) * 1000)
                if path == "/v1/nodes":
                    node_states.update(node["status"] for node in json.loads(body))
            running = task_counts(scrape(manager.metrics_url)).get("running", 0)
        converged = time.monotonic() - started
        writer.close()
        reader.close()
        assert manager.child is not None
        rss = manager.child.rss_mib()
        rows = []
        for path, latencies in samples.items():
            ordered = sorted(latencies)
            figures = [percentile(ordered, p) for p in (50, 95, 99)] + [ordered[-1]]
            rows.append([f"GET {path}", len(ordered), *(f"{f:.1f}" for f in figures)])
        print(f"\nWarren, one service of {replicas} replicas (sim runtime, one manager)\n")
        print(f"all running after: {converged:.1f} s ({running}/{replicas})")
        print_table(["read while converging", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows)
        print(f"own node states seen: {', '.join(sorted(node_states))}")
        print(f"manager RSS: {rss:.1f} MiB")
    finally:
        # Stopped here to time it; one_node_manager's own stop is then a no-op.
        stopping = time.monotonic()
        manager.stop()
        print(f"manager stop: {time.monotonic() - stopping:.1f} s")
        print(f"before: {BEFORE}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=MAX_REPLICAS)
    args = parser.parse_args()
    with one_node_manager(availability="active") as manager:
        run(args.replicas, manager)
    return 0


if __name__ == "__main__":
    sys.exit(main())
