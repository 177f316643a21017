#!/usr/bin/env python3
"""Service networking's figures (issue 9), each beside its anchor, in one run:

  1. throughput (bench/wireguard.py): TCP between two lab hosts over the raw
     underlay, over wireguard-go set up by hand, and over Warren's mesh, node
     to node and container to container (a namespace behind each node, through
     its veth and bridge); Warren's overhead is judged against wireguard-go by
     hand (target: at most 10%);
  2. VIPs (bench/nft_sync.py): time to apply one endpoint change at 10, 1,000
     and 10,000 services, and first-connection latency through a VIP at 10 and
     10,000 services (anchor: Kubernetes' nftables kube-proxy stays flat);
  3. DNS (bench/dns.py): queries/s answered from a task's namespace, beside
     CoreDNS's published 33.7k/s on 2 vCPU.

Each part runs as its own process (they build and remove their own network
namespaces) and prints its own table; this script runs them in turn and stops
at the first that fails. Needs root.

    .venv/bin/python bench/network.py [--quick] [--only throughput|vips|dns]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PARTS = {
    "throughput": ("wireguard.py", ["--quick"], []),
    "vips": ("nft_sync.py", ["--runs", "10", "--connects", "100"], []),
    "dns": ("dns.py", ["--quick"], []),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs of each part")
    parser.add_argument("--only", choices=sorted(PARTS), action="append")
    args = parser.parse_args()
    for name in args.only or list(PARTS):
        script, quick, full = PARTS[name]
        command = [sys.executable, str(BENCH / script), *(quick if args.quick else full)]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        result = subprocess.run(command, check=False)
        took = time.monotonic() - started
        print(f"=== {name}: {took:.0f} s, exit {result.returncode}", flush=True)
        if result.returncode != 0:
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
