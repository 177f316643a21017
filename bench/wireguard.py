#!/usr/bin/env python3
"""TCP throughput between two lab hosts (network namespaces on a bridge):

  raw underlay          over the underlay veths, no tunnel;
  wireguard-go by hand  wireguard-go started and configured by hand with `wg` (MTU 1420),
                        between the hosts' tunnel addresses;
  Warren mesh           the same wireguard-go set up by warren.agent.network (MTU 1420):
                        node to node (the hosts' container-bridge addresses), and
                        container to container (a namespace behind each node, through
                        a veth, the node's bridge and forwarding).

Warren's overhead is judged node to node against wireguard-go by hand (the same
endpoints: the hosts themselves).

One TCP stream per run (a Python socket sender and receiver: iperf3 is not
installed), runs interleaved so load drift hits every path alike; the median per
path is printed beside FIELD-NOTES' anchors. Needs root, nsenter, wireguard-go, wg.

    .venv/bin/python bench/wireguard.py [--quick] [--runs N] [--seconds S]
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchkit import print_table
from chaos import netlab
from network.wg_lab import (
    MeshNode,
    add_container,
    make_nodes,
    mesh_all,
    ns_popen,
    ns_run,
    remove_container,
    tear_down,
    wireguard_go_pids,
)

# FIELD-NOTES "Networking": the same two paths measured by hand on this machine.
ANCHOR_WG_GO = 0.58
ANCHOR_RAW = 19.4
MAX_OVERHEAD = 0.10
PORT = 5201
HAND_PORT = 51821
HAND_MTU = 1420
RAW = "raw underlay"
BY_HAND = "wireguard-go by hand"
MESH = "Warren mesh, node to node"
CONTAINERS = "Warren mesh, container to container"
LABELS = (RAW, BY_HAND, MESH, CONTAINERS)

RECEIVER = """
import socket, sys, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()
buf = bytearray(1 << 18)
total = 0
first = None
while True:
    n = conn.recv_into(buf)
    if not n:
        break
    if first is None:
        first = time.perf_counter()
    total += n
print(total, time.perf_counter() - (first or time.perf_counter()), flush=True)
"""

SENDER = """
import socket, sys, time
sock = socket.socket()
if sys.argv[1] != "-":
    sock.bind((sys.argv[1], 0))
sock.connect((sys.argv[2], int(sys.argv[3])))
data = b"x" * (1 << 18)
end = time.perf_counter() + float(sys.argv[4])
while time.perf_counter() < end:
    sock.sendall(data)
sock.close()
"""


@dataclass(frozen=True)
class Path_:
    label: str
    sender: str  # network namespaces
    receiver: str
    source: str  # "-" for any
    target: str


def throughput(path: Path_, seconds: float) -> float:
    """Gbit/s of one TCP stream along ``path``."""
    listener = ns_popen(path.receiver, [sys.executable, "-c", RECEIVER, path.target, str(PORT)])
    try:
        assert listener.stdout is not None
        if listener.stdout.readline().strip() != "listening":
            raise RuntimeError(f"receiver failed: {listener.communicate()[1]}")
        sent = ns_run(
            path.sender,
            [sys.executable, "-c", SENDER, path.source, path.target, str(PORT), str(seconds)],
            timeout=seconds + 30,
        )
        if sent.returncode != 0:
            raise RuntimeError(f"sender failed on {path.label}: {sent.stderr}")
        out, _err = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    total, elapsed = out.split()
    return int(total) * 8 / float(elapsed) / 1e9


@contextlib.contextmanager
def wireguard_by_hand(nodes: list[MeshNode]) -> Iterator[list[str]]:
    """wireguard-go + `wg` between the hosts, as an admin would do it: 10.88.0.i/24."""
    token = secrets.token_hex(3)
    names = [f"wh{token}{i}" for i in range(len(nodes))]
    addresses = [f"10.88.0.{i + 1}" for i in range(len(nodes))]
    keys = [
        subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
        for _ in nodes
    ]
    publics = [
        subprocess.run(
            ["wg", "pubkey"], input=k, capture_output=True, text=True, check=True
        ).stdout.strip()
        for k in keys
    ]
    procs: list[subprocess.Popen[str]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, node in enumerate(nodes):
                key_file = Path(tmp) / f"{i}.key"
                key_file.write_text(keys[i])
                key_file.chmod(0o600)
                proc = ns_popen(
                    node.netns,
                    ["wireguard-go", "-f", names[i]],
                    env={**os.environ, "LOG_LEVEL": "error"},
                )
                procs.append(proc)
                _wait_for_link(node.netns, names[i])
                other = 1 - i
                for args in (
                    [
                        "wg",
                        "set",
                        names[i],
                        "listen-port",
                        str(HAND_PORT),
                        "private-key",
                        str(key_file),
                        "peer",
                        publics[other],
                        "endpoint",
                        f"{nodes[other].host.address}:{HAND_PORT}",
                        "allowed-ips",
                        f"{addresses[other]}/32",
                    ],
                    ["ip", "addr", "add", f"{addresses[i]}/24", "dev", names[i]],
                    ["ip", "link", "set", names[i], "mtu", str(HAND_MTU), "up"],
                ):
                    ns_run(node.netns, args).check_returncode()
        yield addresses
    finally:
        for node, name in zip(nodes, names, strict=False):
            ns_run(node.netns, ["ip", "link", "del", name])
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for name in names:
            Path(f"/var/run/wireguard/{name}.sock").unlink(missing_ok=True)


def _wait_for_link(netns: str, name: str) -> None:
    for _ in range(250):
        socket_ready = Path(f"/var/run/wireguard/{name}.sock").exists()
        if socket_ready and ns_run(netns, ["ip", "link", "show", name]).returncode == 0:
            return
        time.sleep(0.02)
    raise RuntimeError(f"wireguard-go {name} did not start")


def run(runs: int, seconds: float) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {label: [] for label in LABELS}
    with netlab.Lab() as lab:
        nodes: list[MeshNode] = []
        containers: list[tuple[str, str]] = []
        try:
            nodes = make_nodes(lab, 2)
            a, b = nodes
            containers = [add_container(node) for node in nodes]
            mesh_all(nodes)
            with wireguard_by_hand(nodes) as hand:
                paths = [
                    Path_(RAW, a.netns, b.netns, "-", b.host.address),
                    Path_(BY_HAND, a.netns, b.netns, hand[0], hand[1]),
                    Path_(MESH, a.netns, b.netns, a.gateway, b.gateway),
                    Path_(CONTAINERS, containers[0][0], containers[1][0], "-", containers[1][1]),
                ]
                for run_index in range(runs):
                    # ABCD, DCBA, ...: the two tunnels compared always run back to back.
                    order = paths if run_index % 2 == 0 else paths[::-1]
                    for path in order:
                        value = throughput(path, seconds)
                        results[path.label].append(value)
                        print(
                            f"run {run_index + 1}/{runs} {path.label}: {value:.2f} Gbit/s",
                            flush=True,
                        )
        finally:
            for netns, _address in containers:
                remove_container(netns)
            tear_down(nodes)
    left = wireguard_go_pids([n.name for n in nodes])
    if left:
        raise RuntimeError(f"wireguard-go left running: {left}")
    return results


def report(results: dict[str, list[float]], seconds: float) -> None:
    median = {label: statistics.median(values) for label, values in results.items()}
    anchors = {
        RAW: f"{ANCHOR_RAW} (raw veth)",
        BY_HAND: f"{ANCHOR_WG_GO} (wireguard-go)",
        MESH: f"{ANCHOR_WG_GO} (wireguard-go)",
        CONTAINERS: f"{ANCHOR_WG_GO} (wireguard-go)",
    }
    rows = [
        [label, f"{median[label]:.2f}", f"{min(v):.2f}-{max(v):.2f}", len(v), anchors[label]]
        for label, v in results.items()
    ]
    print()
    print(f"TCP throughput, one stream of {seconds:g} s per run, Gbit/s (median)")
    print_table(["path", "Gbit/s", "range", "runs", "anchor Gbit/s"], rows)
    # Paired per round (both tunnels measured back to back), then the median: the
    # 2-core machine is shared, and its load moves more than the tunnels differ.
    paired = [1 - mesh / hand for mesh, hand in zip(results[MESH], results[BY_HAND], strict=True)]
    overhead = statistics.median(paired)
    verdict = "OK" if overhead <= MAX_OVERHEAD else "OVER TARGET"
    print(
        f"Warren's overhead over wireguard-go by hand (median of {len(paired)} paired rounds, "
        f"each {', '.join(f'{p:+.0%}' for p in paired)}): {overhead:+.1%} "
        f"(target <= {MAX_OVERHEAD:.0%}): {verdict}"
    )
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.2f} (2 cores)")
    print(f"tunnel/raw: {median[MESH] / median[RAW]:.1%} (anchor {ANCHOR_WG_GO / ANCHOR_RAW:.1%})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs of 3 s")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    runs, seconds = (2, 3.0) if args.quick else (args.runs, args.seconds)
    reason = netlab.unavailable_reason()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    report(run(runs, seconds), seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
