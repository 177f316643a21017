"""A process and everything it started, read from /proc: memory and who is in it.

A manager's consensus member may be a child process (an etcd member), so its
memory is the sum over its process tree, not its own VmRSS. RSS counts pages
shared between the processes (a fork's copy-on-write pages) once per process;
PSS (/proc/PID/smaps_rollup) splits each shared page between its sharers, so
the PSS sum is what the tree really costs. Both are reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Member:
    pid: int
    name: str  # /proc/PID/comm: the executable's name, at most 15 characters
    rss_mib: float
    pss_mib: float


def _parent_of(stat: str) -> int:
    # "PID (comm) STATE PPID ...": comm may hold spaces and parentheses.
    return int(stat.rpartition(")")[2].split()[1])


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = _parent_of((entry / "stat").read_text())
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # exited while being read
        children.setdefault(parent, []).append(int(entry.name))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        tree.append(current)
        queue.extend(sorted(children.get(current, [])))
    return tree


def _status_kib(pid: int, key: str, file: str = "status") -> float:
    try:
        for line in (PROC / str(pid) / file).read_text().splitlines():
            if line.startswith(key):
                return float(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return math.nan


def member(pid: int) -> Member:
    try:
        name = (PROC / str(pid) / "comm").read_text().strip()
    except FileNotFoundError:
        name = "?"
    rss = _status_kib(pid, "VmRSS:") / 1024
    pss = _status_kib(pid, "Pss:", "smaps_rollup") / 1024
    return Member(pid, name, rss, pss)


def tree(pid: int) -> list[Member]:
    """Every live process of the tree under ``pid`` (those gone meanwhile left out)."""
    members = [member(p) for p in descendants(pid)]
    return [m for m in members if not math.isnan(m.rss_mib)]


def total_rss_mib(members: list[Member]) -> float:
    return sum(m.rss_mib for m in members)


def total_pss_mib(members: list[Member]) -> float:
    return sum(m.pss_mib for m in members if not math.isnan(m.pss_mib))


def consensus_backend(pid: int) -> str:
    """What the manager under ``pid`` replicates its log with: an etcd child
    process means etcd; a manager alone is PySyncObj, which runs in-process."""
    names = {m.name for m in tree(pid)[1:]}
    return "etcd" if any(name.startswith("etcd") for name in names) else "PySyncObj"


def describe(members: list[Member]) -> str:
    """One line per process: 'name pid: RSS / PSS MiB'."""
    return "\n".join(
        f"    {m.name:<15s} pid {m.pid:>7d}: RSS {m.rss_mib:7.1f} MiB  PSS {m.pss_mib:7.1f} MiB"
        for m in members
    )
