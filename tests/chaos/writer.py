"""The chaos suite's client side, run inside the lab's "client" host, plus the model
that judges what the cluster must hold afterwards.

As a script (``python writer.py COMMAND ...``, with the admin identity in --config-dir):

- ``stream``: one write after another (create / update / scale / delete of uniquely
  named services) until a stop file appears or the duration is over; every attempt
  is one JSON line in --log, acknowledged (``ok``) or not.
- ``snapshot``: what each manager says, asked separately (cluster info, nodes,
  services, optionally tasks), as one JSON document.
- ``write``: a single write with a short timeout (the partition test's probe).

The writer is sequential: one write in flight at a time, so the log order is the
order in which the writes were made.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A service as the model sees it: (replicas, image, sorted env items); None is absent.
State = tuple[int, str, tuple[tuple[str, str], ...]] | None

# Between these two numbers of live services the writer mixes all four operations.
MIN_LIVE = 6
MAX_LIVE = 16
OPS = ("create", "update", "scale", "delete")


# -- the model -----------------------------------------------------------------------


def state_of(value: dict[str, Any]) -> State:
    return (int(value["replicas"]), str(value["image"]), tuple(sorted(value["env"].items())))


def apply(record: dict[str, Any], state: State) -> tuple[bool, State]:
    """(whether the op can succeed in state, the state after it)."""
    op, value = record["op"], record["value"]
    if op == "create":
        return state is None, state_of(value)
    if state is None:
        return False, None
    if op == "update":  # an update replaces the whole spec, replicas included
        return True, state_of(value)
    if op == "scale":
        return True, (int(value["replicas"]), state[1], state[2])
    if op == "delete":
        return True, None
    raise ValueError(f"unknown op {op!r}")


@dataclass
class History:
    """What a write log allows the cluster to hold, name by name.

    An acknowledged write happened, after the writes logged before it. An
    unacknowledged one may or may not have happened (a leader can commit a write
    and die before answering), but at most once and in log order: Raft commits a
    write in its log position, and the writer waits for (or gives up on) each
    write before starting the next.
    """

    possible: dict[str, set[State]] = field(default_factory=dict)
    # Acknowledged writes no earlier acknowledged write allows (e.g. a scale of a
    # service whose delete was acknowledged): the cluster contradicted itself.
    contradictions: list[str] = field(default_factory=list)
    acked: int = 0
    failed: int = 0

    @classmethod
    def of(cls, records: Iterable[dict[str, Any]]) -> History:
        history = cls()
        for record in records:
            history.add(record)
        return history

    def add(self, record: dict[str, Any]) -> None:
        name = record["name"]
        before = self.possible.setdefault(name, {None})
        after = set()
        for state in before:
            allowed, new = apply(record, state)
            if allowed:
                after.add(new)
        if record["ok"]:
            self.acked += 1
            if not after:
                self.contradictions.append(
                    f"acknowledged {_describe(record)} impossible after {sorted(before, key=str)}"
                )
                # Go on from what the acknowledgement says, to judge what follows.
                after = {apply(record, s)[1] for s in before} or {None}
            self.possible[name] = after
        else:
            self.failed += 1
            self.possible[name] = before | after

    def problems(self, services: list[dict[str, Any]]) -> list[str]:
        """Everything wrong with the services a manager lists (``snapshot`` format)."""
        found = list(self.contradictions)
        seen: dict[str, list[dict[str, Any]]] = {}
        for service in services:
            seen.setdefault(service["name"], []).append(service)
        for name, copies in sorted(seen.items()):
            if name not in self.possible:
                found.append(f"{name}: exists but was never written")
            if len(copies) > 1:
                found.append(f"{name}: {len(copies)} services with this name")
        for name, allowed in sorted(self.possible.items()):
            copies = seen.get(name, [])
            actual = state_of(copies[0]) if copies else None
            if actual not in allowed:
                found.append(f"{name}: is {actual}, expected one of {sorted(allowed, key=str)}")
        return found


def _describe(record: dict[str, Any]) -> str:
    return f"{record['op']} {record['name']} {record['value']} (#{record['seq']})"


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a write log (a torn last line, from a killed writer, is dropped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


# -- the client side (imports Warren only when run) -----------------------------------


def _client(args: argparse.Namespace, managers: list[str]) -> Any:
    from warren.cli.client import WarrenClient
    from warren.cli.config import admin_identity

    return WarrenClient(managers, admin_identity(Path(args.config_dir)), timeout=args.timeout)


def _spec(name: str, value: dict[str, Any]) -> Any:
    from warren.core.models import ContainerSpec, ServiceSpec

    return ServiceSpec(
        name=name,
        container=ContainerSpec(image=value["image"], env=dict(value["env"])),
        replicas=value["replicas"],
    )


class Writer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.client = _client(args, args.managers.split(","))
        self.rng = random.Random(args.seed)
        self.prefix = args.prefix
        self.seq = 0
        # What the writer believes each live service is (its last acknowledged
        # value, or the value of an unacknowledged create: it may exist).
        self.live: dict[str, dict[str, Any]] = {}

    def next_op(self) -> tuple[str, str, dict[str, Any]]:
        self.seq += 1
        n = self.seq
        if len(self.live) < MIN_LIVE or (len(self.live) < MAX_LIVE and self.rng.random() < 0.3):
            name = f"{self.prefix}-{n}"
            value = {"replicas": self.rng.randint(0, 2), "image": "app:v1", "env": {"REV": "0"}}
            return "create", name, value
        op = self.rng.choices(("update", "scale", "delete"), weights=(4, 4, 2))[0]
        name = self.rng.choice(sorted(self.live))
        if op == "update":
            current = self.live[name]
            # A unique REV per update: no update ever repeats a value.
            image = current["image"] if self.rng.random() < 0.5 else f"app:v{n}"
            value = {"replicas": current["replicas"], "image": image, "env": {"REV": str(n)}}
        elif op == "scale":
            value = {"replicas": self.rng.randint(0, 3)}
        else:
            value = {}
        return op, name, value

    def perform(self, op: str, name: str, value: dict[str, Any]) -> None:
        if op == "create":
            self.client.create_service(_spec(name, value))
        elif op == "update":
            self.client.update_service(name, _spec(name, value))
        elif op == "scale":
            self.client.scale_service(name, value["replicas"])
        else:
            self.client.delete_service(name)

    def believe(self, op: str, name: str, value: dict[str, Any], ok: bool) -> None:
        if op == "create":
            self.live[name] = value  # acknowledged or not, it may exist
        elif op == "update" and ok:
            self.live[name] = value
        elif op == "scale" and ok:
            self.live[name] = {**self.live[name], "replicas": value["replicas"]}
        elif op == "delete" and ok:
            del self.live[name]

    def step(self) -> dict[str, Any]:
        op, name, value = self.next_op()
        started = time.time()
        error = ""
        try:
            self.perform(op, name, value)
        except Exception as exc:  # any failure leaves the write unacknowledged
            error = f"{type(exc).__name__}: {exc}"
        ended = time.time()
        self.believe(op, name, value, not error)
        return {
            "seq": self.seq,
            "op": op,
            "name": name,
            "value": value,
            "ok": not error,
            "t_start": started,
            "t_ack": ended,
            "error": error,
            "manager": self.client.manager,
        }


def stream(args: argparse.Namespace) -> int:
    writer = Writer(args)
    stop = Path(args.stop_file)
    deadline = time.monotonic() + args.duration
    with open(args.log, "a") as log:
        while not stop.exists() and time.monotonic() < deadline:
            log.write(json.dumps(writer.step()) + "\n")
            log.flush()  # the test reads the log while the writer runs
            time.sleep(writer.rng.uniform(0.05, 0.25))
    return 0


def _ask(args: argparse.Namespace, manager: str) -> dict[str, Any]:
    try:
        with _client(args, [manager]) as client:
            out: dict[str, Any] = {"info": client.cluster_info()}
            out["nodes"] = [
                {
                    "id": n.id,
                    "hostname": n.hostname,
                    "role": str(n.role),
                    "status": str(n.status),
                    "manager_status": n.manager_status,
                }
                for n in client.list_nodes()
            ]
            out["services"] = [
                {
                    "name": s.spec.name,
                    "id": s.id,
                    "replicas": s.spec.replicas,
                    "image": s.spec.container.image,
                    "env": s.spec.container.env,
                }
                for s in client.list_services()
            ]
            if args.tasks:
                out["tasks"] = [
                    {
                        "id": t.id,
                        "service": t.service_name,
                        "node_id": t.node_id,
                        "desired": str(t.desired_state),
                        "state": str(t.status.state),
                        "message": t.status.message,
                    }
                    for t in client.list_tasks(service="" if args.tasks == "*" else args.tasks)
                ]
            return out
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def snapshot(args: argparse.Namespace) -> int:
    managers = args.managers.split(",")
    # In parallel: a cut-off manager costs one timeout, not one per manager.
    with ThreadPoolExecutor(len(managers)) as pool:
        answers = list(pool.map(lambda m: _ask(args, m), managers))
    print(json.dumps(dict(zip(managers, answers, strict=True))))
    return 0


def write(args: argparse.Namespace) -> int:
    value: dict[str, Any] = {"replicas": args.replicas, "image": "app:v1", "env": {"REV": "0"}}
    started = time.time()
    error = ""
    try:
        with _client(args, args.managers.split(",")) as client:
            if args.op == "create":
                client.create_service(_spec(args.name, value))
            elif args.op == "scale":
                client.scale_service(args.name, args.replicas)
            else:
                client.delete_service(args.name)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    if args.op == "scale":
        value = {"replicas": args.replicas}
    elif args.op == "delete":
        value = {}
    record = {
        "seq": 0,
        "op": args.op,
        "name": args.name,
        "value": value,
        "ok": not error,
        "t_start": started,
        "t_ack": time.time(),
        "error": error,
    }
    print(json.dumps(record))
    return 0 if not error else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="writer.py")
    parser.add_argument("--config-dir", required=True, help="holds the admin identity")
    parser.add_argument("--managers", required=True, help="HOST:PORT,... to use")
    parser.add_argument("--timeout", type=float, default=3.0, help="per call, seconds")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("stream")
    s.add_argument("--log", required=True)
    s.add_argument("--stop-file", required=True)
    s.add_argument("--duration", type=float, default=3600.0)
    s.add_argument("--prefix", default="svc")
    s.add_argument("--seed", type=int, default=None)
    p = commands.add_parser("snapshot")
    p.add_argument("--tasks", default="", help="also list this service's tasks (*: all)")
    w = commands.add_parser("write")
    w.add_argument("op", choices=("create", "scale", "delete"))
    w.add_argument("name")
    w.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args(argv)
    return int({"stream": stream, "snapshot": snapshot, "write": write}[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
