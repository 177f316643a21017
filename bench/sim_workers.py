#!/usr/bin/env python3
"""Run N simulated workers in ONE asyncio process (sim runtime).

Each worker has its own data dir and node name and joins with the same token;
joins are staggered so the manager is not hit by N joins at once. SIGTERM or
SIGINT stops every worker cleanly.

    sim_workers.py --count 25 --first 0 --manager 127.0.0.1:2377 --token WRN-... \
        --data-dir /tmp/workers
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from warren import logs
from warren.node.daemon import install_stop_signals, serve_worker
from warren.node.options import WorkerOptions

log = logging.getLogger("sim_workers")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True, help="workers in this process")
    parser.add_argument("--first", type=int, default=0, help="index of the first worker")
    parser.add_argument("--manager", required=True, help="manager API address HOST:PORT")
    parser.add_argument("--token", required=True, help="worker join token")
    parser.add_argument("--data-dir", type=Path, required=True, help="parent of the data dirs")
    parser.add_argument("--stagger", type=float, default=0.05, help="seconds between joins")
    return parser.parse_args()


async def run_worker(options: WorkerOptions, delay: float, stop: asyncio.Event) -> None:
    """One worker; its failure is logged, never allowed to take the others down."""
    try:
        await asyncio.wait_for(stop.wait(), delay)
        return  # stopped before its turn to join
    except TimeoutError:
        pass
    try:
        await serve_worker(options, stop)
    except Exception:
        log.exception("worker %s failed", options.node_name)


async def main_async(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    workers = []
    for n in range(args.count):
        index = args.first + n
        options = WorkerOptions(
            data_dir=args.data_dir / f"sim-{index}",
            token=args.token,
            managers=[args.manager],
            runtime="sim",
            node_name=f"sim-{index}",
        )
        workers.append(run_worker(options, n * args.stagger, stop))
    await asyncio.gather(*workers)


def main() -> int:
    logs.setup("sim-workers")
    asyncio.run(main_async(parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
