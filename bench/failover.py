#!/usr/bin/env python3
"""Leader failover: 3 managers on loopback, SIGKILL the leader N times.

For each kill: the time from the SIGKILL to the first write the cluster
accepts, through a client that knows all three managers (attempts hedged: a
new one every 0.1 s while earlier ones wait, so one stuck until its deadline
does not hide when the cluster took writes again). Every sample is a
committed write: each kill's probe write sets a label of the ``probe`` service
to a value it never had (an update that changes the spec, so it cannot return
early without writing), and the sample counts only if the service it returns
carries that label at a higher object version than before the kill (read
linearizably); a linearizable read afterwards must see the same. Then the old
leader is restarted and the next kill waits for three managers again.

The managers are started as a user would (`warren cluster init`, `warren
manager join`, sim runtime, drained) and driven through the gRPC API only, so
this measures whatever consensus backend the managers run.

Prints min/median/max beside the anchors: PySyncObj's median in CI runs,
Docker Swarm's on this kind of machine, and the target of issue 10.

    .venv/bin/python bench/failover.py [--kills N] [--write-timeout SECONDS]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from clusters import (
    Cluster,
    client_of,
    healthy,
    leader_process,
    manager_pid,
    running_cluster,
    wait_for,
)
from proctree import consensus_backend

from warren.cli.client import WarrenClient
from warren.core.errors import WarrenError
from warren.core.models import Service

PYSYNCOBJ_CI_MEDIAN_SECONDS = 0.47
SWARM_MEDIAN_SECONDS = 12.4
TARGET_MEDIAN_SECONDS = 1.0
TARGET_MAX_SECONDS = 3.0
WRITE_DEADLINE_SECONDS = 30.0
HEDGE_SECONDS = 0.1
PROBE = "probe"
PROBE_LABEL = "failover-probe"


@dataclass(frozen=True)
class Sample:
    killed: str
    seconds: float
    version_before: int
    version_after: int
    attempts: str


@dataclass
class Attempts:
    """The probe write attempts of one kill: how many, and how each failed."""

    started: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def failed(self, exc: WarrenError, at_deadline: bool) -> None:
        key = type(exc).__name__ + (" at its deadline" if at_deadline else "")
        self.failures[key] = self.failures.get(key, 0) + 1

    def __str__(self) -> str:
        failed = ", ".join(f"{n} {kind}" for kind, n in sorted(self.failures.items()))
        return f"{self.started} attempts" + (f" ({failed})" if failed else "")


def probe_write(
    client: WarrenClient, spec: Service, value: str, killed_at: float, timeout: float
) -> tuple[float, Service, Attempts]:
    """Seconds from ``killed_at`` until the label write commits.

    Attempts are hedged: a new one starts as soon as one fails, and every
    HEDGE_SECONDS while others are still waiting, so an attempt stuck until
    its deadline (say, one proposed while there was no leader) does not hide
    when the cluster took writes again. Every attempt writes the same label:
    one that finds it already set returns the service of the write that did."""
    deadline = killed_at + WRITE_DEADLINE_SECONDS
    labelled = replace(spec.spec, labels={**spec.spec.labels, PROBE_LABEL: value})
    attempts = Attempts()

    def attempt() -> tuple[float, Service] | None:
        started = time.monotonic()
        try:
            service = client.update_service(PROBE, labelled)
        except WarrenError as exc:
            attempts.failed(exc, time.monotonic() - started >= 0.9 * timeout)
            return None
        return time.monotonic() - killed_at, service

    with ThreadPoolExecutor(max_workers=64) as pool:
        pending: set[Future[tuple[float, Service] | None]] = set()
        while time.monotonic() < deadline:
            attempts.started += 1
            pending.add(pool.submit(attempt))
            done, pending = wait(pending, HEDGE_SECONDS, FIRST_COMPLETED)
            answers = [a for a in (f.result() for f in done) if a is not None]
            if answers:
                seconds, service = min(answers, key=lambda a: a[0])
                return seconds, service, attempts
            if done:
                time.sleep(0.01)  # failed fast: try again, without spinning
    raise TimeoutError(f"no write accepted within {WRITE_DEADLINE_SECONDS:g} s of the kill")


def committed(service: Service, value: str, version_before: int) -> bool:
    return service.spec.labels.get(PROBE_LABEL) == value and service.version > version_before


def kill_once(
    c: Cluster, client: WarrenClient, reader: WarrenClient, kill: int, timeout: float
) -> Sample:
    name = wait_for(lambda: leader_process(c), 30, "a leader")
    before = reader.get_service(PROBE)
    value = f"kill-{kill}-{time.time_ns()}"
    killed_at = time.monotonic()
    c.processes[name].kill()
    seconds, written, attempts = probe_write(client, before, value, killed_at, timeout)
    if not committed(written, value, before.version):
        raise RuntimeError(
            f"kill {kill}: the write was answered without committing (version "
            f"{before.version} -> {written.version}, label {written.spec.labels})"
        )
    # The write's answer came from one manager; the cluster must agree.
    after = wait_for(lambda: _read_or_none(reader), 30, "a linearizable read")
    if not committed(after, value, before.version):
        raise RuntimeError(f"kill {kill}: a linearizable read does not see the write: {after}")
    return Sample(name, seconds, before.version, written.version, str(attempts))


def _read_or_none(reader: WarrenClient) -> Service | None:
    try:
        return reader.get_service(PROBE)
    except WarrenError:
        return None


def report(samples: list[Sample], kills: int, backend: str, failure: str) -> None:
    print()
    print(
        f"Leader failover, backend {backend}: {len(samples)} of {kills} SIGKILLs of the leader of "
        "3 managers (loopback), SIGKILL to the next committed write:"
    )
    rows: list[tuple[str, str]] = []
    verdict = "NOT met (no sample)"
    if samples:
        times = [s.seconds for s in samples]
        median, worst = statistics.median(times), max(times)
        rows.append(
            ("this run", f"median {median:.3f} s, max {worst:.3f} s (min {min(times):.3f} s)")
        )
        good = median <= TARGET_MEDIAN_SECONDS and worst <= TARGET_MAX_SECONDS
        verdict = "met" if good else "NOT met"
    rows += [
        ("PySyncObj (CI runs)", f"median {PYSYNCOBJ_CI_MEDIAN_SECONDS} s"),
        ("Docker Swarm (this kind of machine)", f"median {SWARM_MEDIAN_SECONDS} s"),
        (
            "target (issue 10)",
            f"median <= {TARGET_MEDIAN_SECONDS:g} s, max <= {TARGET_MAX_SECONDS:g} s: {verdict}",
        ),
    ]
    for label, figures in rows:
        print(f"  {label:<37s} {figures}")
    if failure:
        print(f"  stopped early: {failure}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="leader kills (samples), default 10")
    parser.add_argument(
        "--write-timeout",
        type=float,
        default=1.0,
        help="deadline of each probe write attempt (they are hedged), default 1 s",
    )
    args = parser.parse_args()
    samples: list[Sample] = []
    failure, backend = "", "backend unknown"
    with (
        tempfile.TemporaryDirectory(prefix="warren-failover-") as tmp,
        running_cluster(Path(tmp), 3) as c,
    ):
        backend = consensus_backend(manager_pid(c))
        c.cli("service", "create", PROBE, "--image", "busybox", "--replicas", "0")
        with (
            client_of(c, timeout=args.write_timeout) as client,
            client_of(c, linearizable=True) as reader,
        ):
            for kill in range(1, args.kills + 1):
                try:
                    sample = kill_once(c, client, reader, kill, args.write_timeout)
                except (TimeoutError, RuntimeError) as exc:
                    failure = str(exc)
                    print(f"kill {kill:2d}: {failure}")
                    break
                samples.append(sample)
                print(
                    f"kill {kill:2d}: leader {sample.killed:8s} write committed after "
                    f"{sample.seconds:.3f} s (service version {sample.version_before} -> "
                    f"{sample.version_after}; {sample.attempts})"
                )
                c.restart_manager(sample.killed)
                wait_for(lambda: healthy(reader, 3), 60, "three managers")
    report(samples, args.kills, backend, failure)
    return 0 if samples and not failure else 1


if __name__ == "__main__":
    raise SystemExit(main())
