#!/usr/bin/env python3
"""Shared benchmark plumbing: a manager process on loopback, mTLS, metrics, RSS.

``one_node_manager()`` starts a one-node manager in a temporary directory, waits
until it leads and serves, and stops it (also on error, after printing its log
tail). On the sim runtime it is started straight from
``warren.node.daemon.run_manager`` (what ``warren cluster init`` runs), so those
benchmarks do not depend on the CLI; with ``runtime_args`` (containerd) it is
started as a user would, ``warren cluster init ...``. Every child gets its own
session (process group) and is stopped in ``finally`` blocks.

Run as a script, ``benchkit.py manager ...`` is that manager entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import resource
import socket
import ssl
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

BENCH_DIR = Path(__file__).resolve().parent
# Waiting and child processes are shared with the tests (tests/support.py).
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

from support import Process, cpu_seconds, rss_mib, wait_for  # noqa: E402

if TYPE_CHECKING:
    from warren.cli.client import WarrenClient

__all__ = ["Child", "cpu_seconds", "rss_mib", "wait_for"]

PYTHON = sys.executable
# Quiet children: gRPC chatter and info logs would only fill the log files.
CHILD_ENV = dict(os.environ, GRPC_VERBOSITY="ERROR", WARREN_LOG_LEVEL="warning")
ASSIGNED_OR_LATER = ("assigned", "preparing", "starting", "running")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- child processes -------------------------------------------------------------


@dataclass
class Child(Process):
    """A benchmark child: quiet environment, and more time to stop cleanly."""

    env: Mapping[str, str] | None = field(default_factory=lambda: CHILD_ENV)
    term_grace: float = 15.0
    kill_grace: float = 5.0

    def tail(self, lines: int = 20) -> str:
        return super().tail(lines)


def system_busy_seconds() -> float:
    """CPU time every CPU spent busy since boot (first line of /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuMeter:
    """Splits machine CPU use over a phase into ours (this process and ``pids``)
    and everyone else's, which tells whether other work skewed the figures."""

    pids: list[int]
    started: float = 0.0
    ours: float = 0.0
    busy: float = 0.0

    def __post_init__(self) -> None:
        self.started, self.ours, self.busy = self._now()

    def _now(self) -> tuple[float, float, float]:
        ours = own_cpu_seconds() + sum(cpu_seconds(pid) for pid in self.pids)
        return time.monotonic(), ours, system_busy_seconds()

    def note(self) -> str:
        now, ours, busy = self._now()
        wall = max(now - self.started, 1e-9)
        mine, others = (ours - self.ours) / wall, (busy - self.busy - ours + self.ours) / wall
        return (
            f"machine: {os.cpu_count()} CPUs; during the measured phase this benchmark's "
            f"processes used {mine:.2f} CPUs on average and other processes {max(others, 0):.2f}"
        )


def stop_all(children: Sequence[Child]) -> None:
    for child in reversed(children):
        child.stop()


# -- the manager -------------------------------------------------------------------


@dataclass
class Manager:
    root: Path
    availability: str = "active"
    ports: dict[str, int] = field(default_factory=dict)
    child: Child | None = None
    # Interpreter options before the script (a profiler: ["-m", "cProfile", ...]).
    python_args: list[str] = field(default_factory=list)
    # `cluster init` runtime flags (--runtime containerd ...): when given, the
    # manager is started through the CLI, as a user would.
    runtime_args: list[str] = field(default_factory=list)

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def api_address(self) -> str:
        return f"127.0.0.1:{self.ports['api']}"

    @property
    def rest_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['rest']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    @property
    def pid(self) -> int:
        assert self.child is not None and self.child.popen is not None
        return self.child.popen.pid

    def command(self) -> list[str]:
        """`warren cluster init` with ``runtime_args``, else `benchkit.py manager` (sim)."""
        if self.runtime_args:
            args = [PYTHON, *self.python_args, "-m", "warren", "--config-dir", str(self.config_dir)]
            args += ["cluster", "init", "--data-dir", str(self.root / "manager")]
            args += ["--node-name", "bench-manager"]
            args += ["--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1"]
        else:
            args = [PYTHON, *self.python_args, str(BENCH_DIR / "benchkit.py"), "manager"]
            args += ["--data-dir", str(self.root / "manager")]
            args += ["--config-dir", str(self.config_dir)]
        args += ["--availability", self.availability]
        args += [f"--{name}-port={port}" for name, port in self.ports.items()]
        return args + self.runtime_args

    def start(self, timeout: float = 60.0) -> None:
        for name in ("api", "rest", "metrics", "raft"):
            self.ports[name] = free_port()
        self.child = Child("manager", self.command(), self.root / "manager.log")
        self.child.start()
        wait_for(self._ready, timeout, "the manager to lead and serve")

    def _ready(self) -> bool:
        assert self.child is not None
        self.child.check_alive()
        if not (self.config_dir / "cert.pem").exists():
            return False
        try:
            return scrape(self.metrics_url).get("warren_raft_is_leader", 0.0) == 1.0
        except OSError:
            return False

    def client(self) -> WarrenClient:
        from warren.cli.client import WarrenClient
        from warren.security.tls import IdentityFiles

        return WarrenClient([self.api_address], IdentityFiles(self.config_dir))

    def join_token(self) -> str:
        with self.client() as client:
            return client.join_token("worker")

    def ssl_context(self) -> ssl.SSLContext:
        return client_ssl_context(self.config_dir)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


@contextlib.contextmanager
def one_node_manager(
    root: Path | None = None,
    *,
    availability: str = "active",
    python_args: Sequence[str] = (),
    runtime_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> Iterator[Manager]:
    """A one-node manager, leading and serving; stopped on leaving, also on error
    (then its log tail goes to stderr). Without ``root`` it lives in a temporary
    directory, removed afterwards."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="warren-bench-")))
        manager = Manager(
            root, availability, python_args=list(python_args), runtime_args=list(runtime_args)
        )
        stack.callback(manager.stop)
        try:
            manager.start(timeout)
            yield manager
        except BaseException:
            if manager.child is not None:
                print(f"manager log tail:\n{manager.child.tail()}", file=sys.stderr)
            raise


def client_ssl_context(config_dir: Path) -> ssl.SSLContext:
    """mTLS with the admin identity that ``cluster init`` wrote to the config dir."""
    context = ssl.create_default_context(cafile=str(config_dir / "ca.pem"))
    context.load_cert_chain(config_dir / "cert.pem", config_dir / "key.pem")
    return context


# -- metrics -------------------------------------------------------------------------


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """Prometheus text format as ``{'name{labels}': value}``."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse_metrics(response.read().decode())


def parse_metrics(text: str) -> dict[str, float]:
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            series[key] = float(value)
    return series


def task_counts(series: dict[str, float]) -> dict[str, int]:
    prefix = 'warren_tasks_total{state="'
    return {k[len(prefix) : -2]: int(v) for k, v in series.items() if k.startswith(prefix)}


def ready_workers(series: dict[str, float]) -> int:
    return int(series.get('warren_nodes_total{role="worker",status="ready"}', 0))


# -- figures ---------------------------------------------------------------------------


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


# -- `benchkit.py manager`: the manager process itself ------------------------------------


def run_manager_process(argv: Sequence[str]) -> int:
    from warren.core.models import Availability
    from warren.node.daemon import run_manager
    from warren.node.options import ManagerOptions

    parser = argparse.ArgumentParser(prog="benchkit.py manager")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--config-dir", type=Path, required=True)
    parser.add_argument("--availability", default="active")
    for name in ("api", "rest", "metrics", "raft"):
        parser.add_argument(f"--{name}-port", type=int, required=True)
    args = parser.parse_args(argv)
    options = ManagerOptions(
        data_dir=args.data_dir,
        advertise_addr="127.0.0.1",
        listen_addr="127.0.0.1",
        api_port=args.api_port,
        rest_port=args.rest_port,
        metrics_port=args.metrics_port,
        raft_port=args.raft_port,
        runtime="sim",
        availability=Availability(args.availability),
        config_dir=args.config_dir,
        node_name="bench-manager",
    )
    return run_manager(options)


if __name__ == "__main__":
    if sys.argv[1:2] != ["manager"]:
        sys.exit("usage: benchkit.py manager --data-dir DIR --config-dir DIR --*-port N ...")
    sys.exit(run_manager_process(sys.argv[2:]))
