"""The command line against an in-memory fake client: no manager, no network, no daemon."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from click.testing import CliRunner, Result
from factories import make_node, make_service, make_task

from warren.cli import progress
from warren.cli.client import LogLine
from warren.cli.context import Wiring
from warren.cli.main import cli
from warren.cli.output import human_duration, short_image, table
from warren.cli.parsing import (
    parse_command,
    parse_duration,
    parse_http_probe,
    parse_pair,
    parse_registry_host,
    parse_scale,
    parse_signal,
    parse_size,
    parse_tail,
)
from warren.core.codec import to_dict
from warren.core.errors import InvalidArgument, NotFound
from warren.core.models import (
    Availability,
    ContainerSpec,
    Health,
    HealthCheck,
    NetworkMode,
    Node,
    NodeRole,
    Placement,
    ResourceRequirements,
    Resources,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskStatus,
)
from warren.core.networks import (
    EndpointMode,
    EndpointSpec,
    Network,
    NetworkSpec,
    PortConfig,
    PortProtocol,
    PublishMode,
)
from warren.core.states import TaskState
from warren.node.launch import Daemons
from warren.node.options import ManagerOptions, WorkerOptions
from warren.security.tls import IdentityFiles

TOKEN = "WRN-1-" + "a" * 50 + "-" + "b" * 25


class FakeClient:
    """Records calls; services it creates or changes converge at once unless told not to."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.services: dict[str, Service] = {}
        self.tasks: list[Task] = []
        self.nodes: list[Node] = []
        self.networks: dict[str, Network] = {}
        self.converge = True
        self.error: Exception | None = None
        self.factory_args: list[tuple[list[str], Path]] = []
        self.manager = "10.0.0.1:2377"
        self.info: dict[str, Any] = {
            "cluster_id": "c1",
            "ca_fingerprint": "f" * 50,
            "leader": "mgr-1",
            "is_leader": True,
            "raft_last_log_index": 42,
            "managers": ["10.0.0.1:2377"],
            "nodes": 3,
            "services": 1,
            "tasks": 0,
        }
        # A hook run on every list_tasks call (for progress tests).
        self.on_list_tasks: Callable[[], None] | None = None
        # What logs() streams; an exception in it is raised mid-stream.
        self.log_lines: list[LogLine | BaseException] = []

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if self.error is not None:
            raise self.error

    def add(self, service: Service) -> Service:
        self.services[service.id] = service
        if self.converge:
            self._run(service)
        return service

    def _run(self, service: Service) -> None:
        self.tasks = [t for t in self.tasks if t.service_id != service.id]
        count = service.spec.replicas if service.spec.mode == ServiceMode.REPLICATED else 2
        for slot in range(1, count + 1):
            self.tasks.append(make_task(service, slot=slot, state=TaskState.RUNNING))

    def _find(self, ref: str) -> Service:
        for service in self.services.values():
            if ref in (service.id, service.spec.name):
                return service
        raise NotFound(f"service '{ref}' not found")

    # -- networks: kept by name; the ID is "net-NAME" --

    def create_network(self, spec: NetworkSpec) -> Network:
        self._record("create_network", spec)
        subnet = spec.subnet or "10.32.0.0/16"
        network = Network(id=f"net-{spec.name}", spec=spec, subnet=subnet, block_prefix=24)
        self.networks[spec.name] = network
        return network

    def get_network(self, ref: str) -> Network:
        self._record("get_network", ref)
        for network in self.networks.values():
            if ref in (network.id, network.spec.name):
                return network
        raise NotFound(f"network '{ref}' not found")

    def list_networks(self) -> list[Network]:
        self._record("list_networks")
        return sorted(self.networks.values(), key=lambda n: n.spec.name)

    def remove_network(self, ref: str) -> None:
        self._record("remove_network", ref)
        del self.networks[self.get_network(ref).spec.name]

    def create_service(self, spec: ServiceSpec) -> Service:
        self._record("create_service", spec)
        return self.add(Service(id=f"svc-{spec.name}", spec=spec))

    def get_service(self, ref: str) -> Service:
        self._record("get_service", ref)
        return self._find(ref)

    def list_services(self) -> list[Service]:
        self._record("list_services")
        return sorted(self.services.values(), key=lambda s: s.spec.name)

    def update_service(self, ref: str, spec: ServiceSpec, version: int = 0) -> Service:
        self._record("update_service", ref, spec, version)
        service = self._find(ref)
        updated = dataclasses.replace(service, spec=spec, spec_version=service.spec_version + 1)
        return self.add(updated)

    def scale_service(self, ref: str, replicas: int) -> Service:
        self._record("scale_service", ref, replicas)
        service = self._find(ref)
        return self.add(
            dataclasses.replace(service, spec=dataclasses.replace(service.spec, replicas=replicas))
        )

    def delete_service(self, ref: str) -> None:
        self._record("delete_service", ref)

    def list_nodes(self) -> list[Node]:
        self._record("list_nodes")
        return list(self.nodes)

    def get_node(self, ref: str) -> Node:
        self._record("get_node", ref)
        return next(n for n in self.nodes if ref in (n.id, n.hostname))

    def update_node(
        self, ref: str, availability: Any = None, label_add: Any = None, label_rm: Any = None
    ) -> Node:
        self._record("update_node", ref, availability, label_add, label_rm)
        return self.nodes[0]

    def remove_node(self, ref: str, force: bool = False) -> None:
        self._record("remove_node", ref, force)

    def list_tasks(self, service: str = "", node: str = "") -> list[Task]:
        self._record("list_tasks", service, node)
        if self.on_list_tasks is not None:
            self.on_list_tasks()
        if not service:
            return list(self.tasks)
        service_id = self._find(service).id
        return [t for t in self.tasks if t.service_id == service_id]

    def get_task(self, ref: str) -> Task:
        self._record("get_task", ref)
        return next(t for t in self.tasks if t.id == ref)

    def logs(
        self, service: str = "", task: str = "", follow: bool = False, tail: int = 0
    ) -> Iterator[LogLine]:
        self._record("logs", service, task, follow, tail)
        for item in self.log_lines:
            if isinstance(item, BaseException):
                raise item
            yield item

    def cluster_info(self) -> dict[str, Any]:
        self._record("cluster_info")
        return dict(self.info)

    def join_token(self, role: str, rotate: bool = False) -> str:
        self._record("join_token", role, rotate)
        return TOKEN

    def close(self) -> None:
        pass

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def last(self) -> tuple[str, tuple[Any, ...]]:
        return self.calls[-1]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    IdentityFiles(directory).save(b"ca", b"cert", b"key")
    (directory / "config.json").write_text(json.dumps({"managers": ["127.0.0.1:2377"]}))
    return directory


@dataclasses.dataclass
class Seams:
    """The Wiring ``run`` hands the CLI as click's obj; ``fake`` puts its client in."""

    wiring: Wiring = dataclasses.field(default_factory=Wiring)


@pytest.fixture
def seams() -> Seams:
    return Seams()


@pytest.fixture
def fake(seams: Seams) -> FakeClient:
    client = FakeClient()

    def factory(managers: list[str], identity: IdentityFiles) -> FakeClient:
        client.factory_args.append((managers, identity.directory))
        return client

    seams.wiring = dataclasses.replace(seams.wiring, client_factory=factory)
    return client


@pytest.fixture
def run(config_dir: Path, seams: Seams, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.delenv("WARREN_MANAGER", raising=False)

    def invoke(
        *args: str, env: dict[str, str] | None = None, daemons: Daemons | None = None
    ) -> Result:
        environment = {"WARREN_CONFIG_DIR": str(config_dir), **(env or {})}
        wiring = seams.wiring
        if daemons is not None:
            wiring = dataclasses.replace(wiring, daemons=daemons)
        return CliRunner().invoke(cli, list(args), env=environment, obj=wiring)

    return invoke


def test_an_obj_other_than_a_wiring_is_refused(config_dir: Path) -> None:
    # Ignoring it would run the real daemons (or client) where a test handed fakes.
    started: list[Any] = []
    env = {"WARREN_CONFIG_DIR": str(config_dir)}
    result = CliRunner().invoke(cli, ["cluster", "init"], env=env, obj=recording_daemons(started))
    assert isinstance(result.exception, TypeError)
    assert "takes a Wiring" in str(result.exception)
    assert started == []


def assert_one_error_line(result: Result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# -- value syntax ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64m", 64 * 1024**2),
        ("1g", 1024**3),
        ("512k", 512 * 1024),
        ("1048576", 1048576),
        ("1.5g", int(1.5 * 1024**3)),
        ("64MB", 64 * 1024**2),
        ("2gib", 2 * 1024**3),
        ("0", 0),
    ],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "m", "-1m", "12x", "1.2.3", "64 megs"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5s", 5.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("2h", 7200.0),
        ("2.5", 2.5),
        ("1h1m1s", 3661.0),
    ],
)
def test_durations(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "s", "5x", "-5s", "1m30", "5 s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid duration"):
        parse_duration(text)


def test_pairs_and_scales() -> None:
    assert parse_pair("A=b=c", "env", value_required=True) == ("A", "b=c")
    assert parse_pair("A=", "env", value_required=True) == ("A", "")
    assert parse_pair("ssd", "label", value_required=False) == ("ssd", "")
    with pytest.raises(InvalidArgument):
        parse_pair("A", "env", value_required=True)
    with pytest.raises(InvalidArgument):
        parse_pair("=x", "label", value_required=False)
    assert parse_scale("web=3") == ("web", 3)
    for bad in ("web", "web=", "web=-1", "=3", "web=x"):
        with pytest.raises(InvalidArgument):
            parse_scale(bad)
    assert parse_command("sh -c 'echo hi'") == ("sh", "-c", "echo hi")
    with pytest.raises(InvalidArgument):
        parse_command("sh -c 'oops")


def test_human_durations_and_table() -> None:
    assert human_duration(0.2) == "less than a second"
    assert human_duration(3.4) == "3 seconds"
    assert human_duration(70) == "about a minute"
    assert human_duration(5 * 60) == "5 minutes"
    assert human_duration(3 * 3600) == "3 hours"
    assert table(["A", "BB"], [["xyz", "1"]]) == "A     BB\nxyz   1"


# -- service create ------------------------------------------------------------------


def test_create_builds_the_full_spec(run: Callable[..., Result], fake: FakeClient) -> None:
    result = run(
        "service", "create", "web", "--image", "nginx:1.27", "--replicas", "3",
        "-e", "A=1", "--env", "B=x=y", "-l", "tier=front", "--constraint", "node.labels.zone==a",
        "--reserve-cpu", "0.5", "--reserve-memory", "64m", "--limit-cpu", "1.5",
        "--limit-memory", "1.5g", "--restart-condition", "on-failure",
        "--restart-max-attempts", "4", "--restart-delay", "1m30s", "--restart-window", "500ms",
        "--max-replicas-per-node", "2", "--detach",
        "--", "nginx", "-g", "daemon off;",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "svc-web\n"
    assert fake.calls == [
        (
            "create_service",
            (
                ServiceSpec(
                    name="web",
                    container=ContainerSpec(
                        image="nginx:1.27",
                        args=("nginx", "-g", "daemon off;"),
                        env={"A": "1", "B": "x=y"},
                    ),
                    replicas=3,
                    labels={"tier": "front"},
                    restart=RestartPolicy(RestartCondition.ON_FAILURE, 90.0, 4, 0.5),
                    resources=ResourceRequirements(
                        reservations=Resources(0.5, 64 * 1024**2),
                        limits=Resources(1.5, int(1.5 * 1024**3)),
                    ),
                    placement=Placement(
                        constraints=("node.labels.zone==a",), max_replicas_per_node=2
                    ),
                ),
            ),
        )
    ]


def test_create_global(run: Callable[..., Result], fake: FakeClient) -> None:
    result = run("service", "create", "agent", "--image", "busybox", "--mode", "global", "-d")
    assert result.exit_code == 0, result.output
    (spec,) = fake.calls[0][1]
    assert spec.mode == ServiceMode.GLOBAL
    assert spec.replicas == 0


def test_replicas_with_global_mode_is_refused(run: Callable[..., Result], fake: FakeClient) -> None:
    result = run(
        "service", "create", "agent", "--image", "busybox", "--mode", "global", "--replicas", "2"
    )
    line = assert_one_error_line(result)
    assert "--replicas" in line and "global" in line
    assert fake.calls == []


def test_bad_size_is_refused_before_any_call(run: Callable[..., Result], fake: FakeClient) -> None:
    result = run("service", "create", "web", "--image", "nginx", "--reserve-memory", "12x")
    line = assert_one_error_line(result, exit_code=2)
    assert "invalid size '12x'" in line
    assert fake.calls == []


def test_invalid_spec_is_refused_before_any_call(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    result = run("service", "create", "web", "--image", "nginx", "--constraint", "zone=a")
    line = assert_one_error_line(result)
    assert "invalid constraint" in line
    assert fake.calls == []


def test_create_waits_until_converged(run: Callable[..., Result], fake: FakeClient) -> None:
    result = run("service", "create", "web", "--image", "nginx", "--replicas", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["svc-web", "web: 2/2 running", "web: converged"]


def test_progress_prints_a_line_per_change(
    run: Callable[..., Result], fake: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "POLL_INTERVAL", 0)
    fake.converge = False
    states = iter([TaskState.PENDING, TaskState.PENDING, TaskState.RUNNING, TaskState.RUNNING])

    def advance() -> None:
        service = fake.services["svc-web"]
        fake.tasks = [make_task(service, slot=1, state=TaskState.RUNNING)]
        fake.tasks.append(make_task(service, slot=2, state=next(states)))

    fake.on_list_tasks = advance
    result = run("service", "create", "web", "--image", "nginx", "--replicas", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "svc-web",
        "web: 1/2 running",
        "web: 2/2 running",
        "web: converged",
    ]


def test_timeout_names_the_pending_reason(run: Callable[..., Result], fake: FakeClient) -> None:
    fake.converge = False
    service = fake.add(make_service("web", id="svc-web", replicas=1))
    pending = make_task(service, state=TaskState.PENDING)
    reason = "no suitable node (constraint not met on 3 nodes)"
    fake.tasks = [dataclasses.replace(pending, status=TaskStatus(TaskState.PENDING, reason))]
    result = run("service", "scale", "web=1", "--timeout", "0")
    line = assert_one_error_line(result)
    assert line == f"Error: web did not converge within 0s: 1 task pending: {reason}"
    assert "web: 0/1 running" in result.stdout


# -- progress measurement ------------------------------------------------------------


def test_old_tasks_still_running_block_convergence() -> None:
    service = make_service("web", replicas=1, spec_version=2)
    new = make_task(service, slot=1, state=TaskState.RUNNING)
    old = make_task(
        service, slot=1, state=TaskState.RUNNING, spec_version=1, desired_state=TaskState.SHUTDOWN
    )
    state = progress.measure(service, [new, old], lambda: 0)
    assert (state.running, state.desired, state.converged) == (1, 1, False)
    assert state.waiting == "1 old task still running"
    assert progress.measure(service, [new], lambda: 0).converged


def test_global_convergence() -> None:
    service = make_service("agent", mode=ServiceMode.GLOBAL, replicas=0)
    assert progress.measure(service, [], lambda: 0).converged
    waiting = progress.measure(service, [], lambda: 2)
    assert (waiting.running, waiting.desired, waiting.converged) == (0, 2, False)
    assert waiting.waiting == "2 tasks not created yet"
    running = [
        make_task(service, slot=0, node_id=f"n{i}", state=TaskState.RUNNING) for i in range(2)
    ]
    assert progress.measure(service, running, lambda: 2) == progress.Progress(2, 2, True, "")
    node = make_node(labels={"zone": "a"})
    constrained = make_service(
        "agent", mode=ServiceMode.GLOBAL, constraints=["node.labels.zone==b"]
    )
    assert progress.eligible_count(constrained, [node]) == 0


# -- other service commands ------------------------------------------------------------


def test_scale_several_services(run: Callable[..., Result], fake: FakeClient) -> None:
    fake.add(make_service("web", id="svc-web"))
    fake.add(make_service("api", id="svc-api", replicas=2))
    result = run("service", "scale", "web=3", "api=0")
    assert result.exit_code == 0, result.output
    assert [c for c in fake.calls if c[0] == "scale_service"] == [
        ("scale_service", ("web", 3)),
        ("scale_service", ("api", 0)),
    ]
    assert result.stdout.splitlines() == [
        "web scaled to 3",
        "api scaled to 0",
        "web: 3/3 running",
        "web: converged",
        "api: 0/0 running",
        "api: converged",
    ]


def test_scale_syntax_is_checked_before_any_call(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    result = run("service", "scale", "web=3", "api")
    assert_one_error_line(result, exit_code=2)
    assert fake.calls == []


def test_update_edits_the_spec_read(run: Callable[..., Result], fake: FakeClient) -> None:
    base = make_service("web", id="svc-web", constraints=["node.role == worker"])
    spec = dataclasses.replace(
        base.spec,
        container=dataclasses.replace(base.spec.container, env={"A": "1", "B": "2"}),
        labels={"x": "1"},
    )
    fake.add(dataclasses.replace(base, spec=spec, version=7))
    result = run(
        "service", "update", "web", "--image", "nginx:1.28", "--env-rm", "A", "--env-add", "C=3",
        "--label-rm", "x", "--constraint-rm", "node.role==worker",
        "--constraint-add", "node.labels.zone==a", "--limit-memory", "1g",
        "--restart-delay", "2s", "--args", "nginx -g 'daemon off;'", "-d",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    update = next(args for name, args in fake.calls if name == "update_service")
    ref, new_spec, version = update
    assert (ref, version) == ("svc-web", 7)
    assert new_spec == dataclasses.replace(
        spec,
        container=dataclasses.replace(
            spec.container,
            image="nginx:1.28",
            env={"B": "2", "C": "3"},
            args=("nginx", "-g", "daemon off;"),
        ),
        labels={},
        placement=Placement(constraints=("node.labels.zone==a",)),
        resources=ResourceRequirements(limits=Resources(0.0, 1024**3)),
        restart=dataclasses.replace(spec.restart, delay=2.0),
    )


def test_update_waits_for_the_new_spec_version(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    fake.add(make_service("web", id="svc-web", replicas=2))
    result = run("service", "update", "web", "--image", "nginx:1.28")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["web", "web: 2/2 running", "web: converged"]


def test_update_replicas_of_a_global_service_is_refused(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    fake.add(make_service("agent", id="svc-agent", mode=ServiceMode.GLOBAL, replicas=0))
    result = run("service", "update", "agent", "--replicas", "3")
    assert "global" in assert_one_error_line(result)
    assert "update_service" not in fake.names()


def test_service_ls_table(run: Callable[..., Result], fake: FakeClient) -> None:
    fake.converge = False
    web = fake.add(make_service("web", id="svc-web-0123456789", replicas=3))
    agent = fake.add(make_service("agent", id="svc-agent", mode=ServiceMode.GLOBAL, replicas=0))
    fake.tasks = [
        make_task(web, slot=1, state=TaskState.RUNNING),
        make_task(web, slot=2, state=TaskState.RUNNING),
        make_task(web, slot=3, state=TaskState.PENDING),
        make_task(web, slot=3, state=TaskState.RUNNING, desired_state=TaskState.SHUTDOWN),
        make_task(agent, slot=0, node_id="n1", state=TaskState.RUNNING),
    ]
    result = run("service", "ls")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "ID             NAME    MODE         REPLICAS   IMAGE",
        "svc-agent      agent   global       1/1        nginx:1.27",
        "svc-web-0123   web     replicated   2/3        nginx:1.27",
    ]


@pytest.mark.parametrize("position", ["root", "command"])
def test_json_and_yaml_output(run: Callable[..., Result], fake: FakeClient, position: str) -> None:
    service = fake.add(make_service("web", id="svc-web"))
    for fmt, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        args = ["-o", fmt, "service", "ls"] if position == "root" else ["service", "ls", "-o", fmt]
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert load(result.stdout) == [to_dict(service)]


def test_inspect_is_json_unless_yaml(run: Callable[..., Result], fake: FakeClient) -> None:
    service = fake.add(make_service("web", id="svc-web"))
    assert json.loads(run("service", "inspect", "web").stdout) == [to_dict(service)]
    assert yaml.safe_load(run("service", "inspect", "web", "-o", "yaml").stdout) == [
        to_dict(service)
    ]


def test_service_ps_shows_nodes_history_and_reasons(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    fake.converge = False
    web = fake.add(make_service("web", id="svc-web", replicas=2))
    fake.nodes = [make_node("node-1", hostname="alpha")]
    failed = make_task(
        web, id="t-old", slot=1, node_id="node-1", state=TaskState.FAILED, created_at=1
    )
    fake.tasks = [
        make_task(web, id="t-new", slot=1, node_id="node-1", state=TaskState.RUNNING, created_at=2),
        dataclasses.replace(
            failed,
            desired_state=TaskState.SHUTDOWN,
            status=TaskStatus(TaskState.FAILED, "exited", "exit code 1"),
        ),
        dataclasses.replace(
            make_task(web, id="t-pending", slot=2),
            status=TaskStatus(
                TaskState.PENDING, "no suitable node (insufficient memory on 1 node)"
            ),
        ),
    ]
    result = run("service", "ps", "web")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "NAME", "IMAGE", "NODE", "DESIRED", "STATE", "CURRENT", "STATE", "ERROR/MESSAGE",
    ]  # fmt: skip
    assert lines[1].split() == ["t-new", "web.1", "nginx:1.27", "alpha", "running", "running"]
    assert lines[2].split()[:4] == ["t-old", "\\_", "web.1", "nginx:1.27"]
    assert lines[2].endswith("exit code 1")
    assert lines[3].endswith("no suitable node (insufficient memory on 1 node)")


DIGEST = "sha256:" + "0123456789ab" + "c" * 52


@pytest.mark.parametrize(
    ("image", "shown"),
    [
        (f"docker.io/library/busybox:latest@{DIGEST}", "busybox:latest@sha256:0123456789ab"),
        (f"docker.io/team/app:2@{DIGEST}", "team/app:2@sha256:0123456789ab"),
        (f"docker.io/library/a/b:1@{DIGEST}", "library/a/b:1@sha256:0123456789ab"),
        (f"registry.local:5000/tools@{DIGEST}", "registry.local:5000/tools@sha256:0123456789ab"),
        ("docker.io/library/nginx:1.27", "nginx:1.27"),
        ("nginx:1.27", "nginx:1.27"),
        ("localhost/app", "localhost/app"),
    ],
)
def test_short_image_is_the_familiar_name_and_a_short_digest(image: str, shown: str) -> None:
    assert short_image(image) == shown


def test_service_ls_and_ps_shorten_digests_unless_no_trunc(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    pinned = f"docker.io/library/busybox:latest@{DIGEST}"
    service = make_service("web", id="svc-web-0123456789")
    container = dataclasses.replace(service.spec.container, image=pinned)
    service = dataclasses.replace(
        service, spec=dataclasses.replace(service.spec, container=container)
    )
    fake.add(service)
    fake.tasks = [make_task(service, id="task-0123456789abcdef", state=TaskState.RUNNING)]
    fake.nodes = []
    short = "busybox:latest@sha256:0123456789ab"
    listing = run("service", "ls").stdout.splitlines()[1].split()
    assert listing == ["svc-web-0123", "web", "replicated", "1/1", short]
    whole = run("service", "ls", "--no-trunc").stdout.splitlines()[1].split()
    assert whole == ["svc-web-0123456789", "web", "replicated", "1/1", pinned]
    tasks = run("service", "ps", "web").stdout.splitlines()[1].split()
    assert tasks[:3] == ["task-0123456", "web.1", short]
    tasks = run("service", "ps", "web", "--no-trunc").stdout.splitlines()[1].split()
    assert tasks[:3] == ["task-0123456789abcdef", "web.1", pinned]


def test_service_rm(run: Callable[..., Result], fake: FakeClient) -> None:
    result = run("service", "rm", "web", "api")
    assert result.exit_code == 0
    assert result.stdout == "web\napi\n"
    assert fake.calls == [("delete_service", ("web",)), ("delete_service", ("api",))]


# -- nodes and cluster -------------------------------------------------------------------


def test_node_commands(run: Callable[..., Result], fake: FakeClient) -> None:
    fake.nodes = [make_node("node-1", hostname="alpha", role=NodeRole.MANAGER)]
    listing = run("node", "ls")
    row = listing.stdout.splitlines()[1].split()
    assert row == ["node-1", "alpha", "manager", "ready", "active"]
    result = run(
        "node", "update", "alpha", "--availability", "drain", "--label-add", "zone=a",
        "--label-rm", "old",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert fake.last() == ("update_node", ("alpha", Availability.DRAIN, {"zone": "a"}, ["old"]))
    assert run("node", "rm", "beta", "--force").stdout == "beta\n"
    assert fake.last() == ("remove_node", ("beta", True))
    assert json.loads(run("node", "inspect", "alpha").stdout) == [to_dict(fake.nodes[0])]


def test_join_token(run: Callable[..., Result], fake: FakeClient) -> None:
    quiet = run("cluster", "join-token", "worker", "-q")
    assert quiet.stdout == TOKEN + "\n"
    full = run("cluster", "join-token", "worker", "--rotate")
    assert full.stdout == (
        "Successfully rotated worker join token.\n\n"
        "To add a worker to this cluster, run:\n\n"
        f"    warren worker join --token {TOKEN} --manager 10.0.0.1:2377\n\n"
    )
    assert ("join_token", ("worker", True)) in fake.calls
    assert run("cluster", "join-token", "admin").exit_code == 2


def test_cluster_info(run: Callable[..., Result], fake: FakeClient) -> None:
    text = run("cluster", "info").stdout
    assert "Cluster ID:" in text and "Is leader:" in text and "yes" in text
    assert json.loads(run("cluster", "info", "-o", "json").stdout) == fake.info


# -- errors and configuration ---------------------------------------------------------


def test_warren_error_is_one_line(run: Callable[..., Result], fake: FakeClient) -> None:
    fake.error = NotFound("service 'nope' not found")
    result = run("service", "inspect", "nope")
    assert assert_one_error_line(result) == "Error: service 'nope' not found"
    assert result.stderr == "Error: service 'nope' not found\n"


class _FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.PERMISSION_DENIED

    def details(self) -> str:
        return "worker certificates may not call this method"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("warren-error-code", "permission_denied"),)


def test_raw_grpc_error_is_one_line(run: Callable[..., Result], fake: FakeClient) -> None:
    fake.error = _FakeRpcError()
    result = run("node", "ls")
    assert assert_one_error_line(result) == "Error: worker certificates may not call this method"


def test_manager_flag_overrides_config(
    run: Callable[..., Result], fake: FakeClient, config_dir: Path
) -> None:
    run("node", "ls")
    run("--manager", "a:1,b:2", "node", "ls")
    run("node", "ls", env={"WARREN_MANAGER": "c:3"})
    assert fake.factory_args == [
        (["127.0.0.1:2377"], config_dir),
        (["a:1", "b:2"], config_dir),
        (["c:3"], config_dir),
    ]


def test_missing_credentials(run: Callable[..., Result], fake: FakeClient, tmp_path: Path) -> None:
    result = run("--config-dir", str(tmp_path / "empty"), "--manager", "a:1", "node", "ls")
    assert "no admin credentials" in assert_one_error_line(result)
    (tmp_path / "creds").mkdir()
    IdentityFiles(tmp_path / "creds").save(b"ca", b"cert", b"key")
    result = run("--config-dir", str(tmp_path / "creds"), "node", "ls")
    assert "--manager" in assert_one_error_line(result)


# -- daemons (nothing is started: the CLI is handed fake entry points) --------------------


def recording_daemons(started: list[Any], exit_code: int = 0) -> Daemons:
    """Daemons that only record the options each command would start with."""

    def start(options: Any) -> int:
        started.append(options)
        return exit_code

    return Daemons(run_manager=start, run_worker=start)


def test_cluster_init_builds_manager_options(
    run: Callable[..., Result], config_dir: Path, tmp_path: Path
) -> None:
    started: list[Any] = []
    daemons = recording_daemons(started, exit_code=3)
    result = run(
        "cluster", "init", "--data-dir", str(tmp_path / "data"), "--advertise-addr", "10.1.2.3",
        "--api-port", "3000", "--availability", "drain", "--node-name", "m1",
        "--label", "zone=a", "--node-down-timeout", "1m",
        daemons=daemons,
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert started == [
        ManagerOptions(
            data_dir=tmp_path / "data",
            advertise_addr="10.1.2.3",
            listen_addr="0.0.0.0",
            api_port=3000,
            rest_port=2378,
            metrics_port=9090,
            raft_port=2379,
            runtime="containerd",
            availability=Availability.DRAIN,
            node_down_timeout=60.0,
            config_dir=config_dir,
            node_name="m1",
            labels={"zone": "a"},
            containerd_socket="/run/containerd/containerd.sock",
            containerd_namespace="warren",
            insecure_registries=[],
            registry_config=None,
            wireguard_port=51820,
            network_plane="",
            replace_admin_credentials=False,
        )
    ]
    forced = run("cluster", "init", "--data-dir", str(tmp_path / "d2"), "--force", daemons=daemons)
    assert forced.exit_code == 3
    assert started[-1].replace_admin_credentials is True


def test_daemons_refuse_a_bad_log_level_before_starting(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    data = str(tmp_path / "data")
    backup_file = tmp_path / "cluster.backup"
    backup_file.write_bytes(b"")
    commands = [
        ["cluster", "init", "--data-dir", data],
        ["manager", "join", "--token", TOKEN, "--manager", "m:1", "--data-dir", data],
        ["worker", "join", "--token", TOKEN, "--manager", "m:1", "--data-dir", data],
        ["cluster", "restore", str(backup_file), "--data-dir", data],
    ]
    for command in commands:
        result = run(*command, env={"WARREN_LOG_LEVEL": "bogus"})
        line = assert_one_error_line(result, exit_code=2)
        assert line == (
            "Error: WARREN_LOG_LEVEL='bogus' is not a log level: use debug, info, warning or error"
        ), command
        assert result.stderr == line + "\n"
        assert not (tmp_path / "data").exists()


def test_worker_join_builds_worker_options(run: Callable[..., Result], tmp_path: Path) -> None:
    started: list[WorkerOptions] = []
    daemons = recording_daemons(started)
    result = run(
        "worker", "join", "--token", TOKEN, "--manager", "10.0.0.1:2377,10.0.0.2:2377",
        "--data-dir", str(tmp_path / "w"), "--node-name", "w1", "-l", "ssd",
        daemons=daemons,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert started == [
        WorkerOptions(
            data_dir=tmp_path / "w",
            token=TOKEN,
            managers=["10.0.0.1:2377", "10.0.0.2:2377"],
            runtime="containerd",
            node_name="w1",
            labels={"ssd": ""},
        )
    ]
    # Resuming: no token, managers from the global option.
    resumed = run(
        "--manager", "m:1", "worker", "join", "--data-dir", str(tmp_path / "w"), daemons=daemons
    )
    assert resumed.exit_code == 0, resumed.output
    assert started[1].token is None
    assert started[1].managers == ["m:1"]


def test_help_needs_no_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config-dir", str(tmp_path / "none"), "service", "--help"])
    assert result.exit_code == 0
    assert "create" in result.stdout


# -- container and health flags -------------------------------------------------------


def test_parsers_of_new_values() -> None:
    assert parse_signal("SIGTERM") == "SIGTERM"
    assert parse_signal("hup") == "SIGHUP"
    assert parse_signal("9") == "SIGKILL"
    for bad in ("SIGNOPE", "", "999", "-1"):
        with pytest.raises(InvalidArgument, match="unknown signal"):
            parse_signal(bad)
    assert parse_http_probe("8080/healthz") == "8080/healthz"
    assert parse_http_probe("80") == "80"
    for bad in ("", "/healthz", "x/y", "70000/", "0/"):
        with pytest.raises(InvalidArgument, match="invalid HTTP health check"):
            parse_http_probe(bad)
    assert parse_registry_host("10.0.0.5:5000") == "10.0.0.5:5000"
    assert parse_registry_host("registry.local") == "registry.local"
    for bad in ("", "http://r:5000", "r:x", "r:", ":5000", "r:5000/v2", "a b:1"):
        with pytest.raises(InvalidArgument, match="invalid registry"):
            parse_registry_host(bad)
    assert parse_tail("all") == 0
    assert parse_tail("20") == 20
    for bad in ("0", "-1", "x", ""):
        with pytest.raises(InvalidArgument, match="invalid tail"):
            parse_tail(bad)


def test_create_maps_container_and_health_flags(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    result = run(
        "service", "create", "web", "--image", "nginx", "-d",
        "--entrypoint", "/docker-entrypoint.sh --verbose 'a b'", "--workdir", "/srv",
        "--user", "1000:1000", "--read-only", "--init", "--network", "host",
        "--stop-signal", "QUIT", "--stop-grace-period", "1m",
        "--health-cmd", "curl -f http://localhost/ || exit 1", "--health-interval", "5s",
        "--health-timeout", "2s", "--health-retries", "4", "--health-start-period", "30s",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (spec,) = fake.calls[0][1]
    assert spec == ServiceSpec(
        name="web",
        container=ContainerSpec(
            image="nginx",
            entrypoint=("/docker-entrypoint.sh", "--verbose", "a b"),
            workdir="/srv",
            user="1000:1000",
            read_only=True,
            init=True,
            network_mode=NetworkMode.HOST,
            stop_signal="SIGQUIT",
            stop_grace_period=60.0,
            health=HealthCheck(
                cmd=("/bin/sh", "-c", "curl -f http://localhost/ || exit 1"),
                interval=5.0,
                timeout=2.0,
                retries=4,
                start_period=30.0,
            ),
        ),
    )


def test_create_without_new_flags_keeps_the_defaults(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    assert run("service", "create", "web", "--image", "nginx", "-d").exit_code == 0
    (spec,) = fake.calls[0][1]
    assert spec == ServiceSpec(name="web", container=ContainerSpec(image="nginx"))
    assert spec.container.health is None and spec.container.network_mode == NetworkMode.PRIVATE


@pytest.mark.parametrize(
    ("flags", "check"),
    [
        (["--health-http", "8080/healthz"], HealthCheck(http="8080/healthz")),
        (["--health-tcp", "5432"], HealthCheck(tcp=5432)),
        (
            ["--health-tcp", "6379", "--health-retries", "1"],
            HealthCheck(tcp=6379, retries=1),
        ),
    ],
)
def test_create_http_and_tcp_probes(
    run: Callable[..., Result], fake: FakeClient, flags: list[str], check: HealthCheck
) -> None:
    result = run("service", "create", "web", "--image", "nginx", "-d", *flags)
    assert result.exit_code == 0, result.output
    assert fake.calls[0][1][0].container.health == check


@pytest.mark.parametrize(
    ("flags", "exit_code", "message"),
    [
        (["--health-cmd", "true", "--health-http", "80/"], 1, "use only one of"),
        (["--health-http", "80/", "--health-tcp", "80"], 1, "use only one of"),
        (["--health-interval", "5s"], 1, "--health-interval needs a health check"),
        (["--health-retries", "2"], 1, "--health-retries needs a health check"),
        (["--health-cmd", " "], 1, "--health-cmd must not be empty"),
        (["--health-cmd", "true", "--health-interval", "0s"], 1, "must be positive"),
        (["--health-http", "web/healthz"], 2, "invalid HTTP health check"),
        (["--health-tcp", "0"], 2, "--health-tcp"),
        (["--health-cmd", "true", "--health-retries", "0"], 2, "--health-retries"),
        (["--stop-signal", "SIGNOPE"], 2, "unknown signal 'SIGNOPE'"),
        (["--stop-grace-period", "soon"], 2, "invalid duration"),
        (["--workdir", "srv"], 1, "workdir must be an absolute path"),
        (["--entrypoint", "sh -c 'oops"], 2, "invalid command"),
        (["--network", "host", "--network", "back"], 1, "--network host uses the node's network"),
        (["--publish", "8080:"], 2, "invalid port '8080:'"),
        (["--publish", "published=80,target=0"], 2, "--publish"),
        (["--publish", "80/sctp"], 2, "invalid port '80/sctp'"),
    ],
)
def test_bad_container_or_health_flags_are_refused(
    run: Callable[..., Result],
    fake: FakeClient,
    flags: list[str],
    exit_code: int,
    message: str,
) -> None:
    result = run("service", "create", "web", "--image", "nginx", *flags)
    assert message in assert_one_error_line(result, exit_code)
    assert fake.calls == []


def _service_with(fake: FakeClient, **container: Any) -> Service:
    """Service web with these container settings."""
    base = make_service("web", id="svc-web")
    spec = dataclasses.replace(
        base.spec, container=dataclasses.replace(base.spec.container, **container)
    )
    return fake.add(dataclasses.replace(base, spec=spec, version=3))


def _updated_spec(fake: FakeClient) -> ServiceSpec:
    ref, spec, version = next(args for name, args in fake.calls if name == "update_service")
    assert (ref, version) == ("svc-web", 3)
    assert isinstance(spec, ServiceSpec)
    return spec


def test_update_container_flags(run: Callable[..., Result], fake: FakeClient) -> None:
    service = _service_with(
        fake,
        entrypoint=("/init",),
        workdir="/srv",
        user="app",
        read_only=True,
        init=True,
    )
    result = run(
        "service", "update", "web", "-d", "--entrypoint", "", "--workdir", "", "--user", "0",
        "--no-read-only", "--no-init", "--network", "host", "--stop-signal", "SIGINT",
        "--stop-grace-period", "500ms",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    container = dataclasses.replace(
        service.spec.container,
        entrypoint=(),
        workdir="",
        user="0",
        read_only=False,
        init=False,
        network_mode=NetworkMode.HOST,
        stop_signal="SIGINT",
        stop_grace_period=0.5,
    )
    assert _updated_spec(fake) == dataclasses.replace(service.spec, container=container)


def test_update_without_container_flags_keeps_them(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    service = _service_with(
        fake, entrypoint=("/init",), read_only=True, network_mode=NetworkMode.HOST
    )
    assert run("service", "update", "web", "-d", "--image", "nginx:2").exit_code == 0
    container = dataclasses.replace(service.spec.container, image="nginx:2")
    assert _updated_spec(fake) == dataclasses.replace(service.spec, container=container)


def test_update_interval_alone_keeps_the_probe(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    check = HealthCheck(http="8080/healthz", interval=10.0, retries=5)
    _service_with(fake, health=check)
    result = run("service", "update", "web", "-d", "--health-interval", "2s")
    assert result.exit_code == 0, result.output
    assert _updated_spec(fake).container.health == dataclasses.replace(check, interval=2.0)


def test_update_new_probe_keeps_the_timing(run: Callable[..., Result], fake: FakeClient) -> None:
    _service_with(fake, health=HealthCheck(http="8080/healthz", interval=10.0, retries=5))
    result = run("service", "update", "web", "-d", "--health-tcp", "8080")
    assert result.exit_code == 0, result.output
    assert _updated_spec(fake).container.health == HealthCheck(tcp=8080, interval=10.0, retries=5)


def test_update_adds_a_health_check(run: Callable[..., Result], fake: FakeClient) -> None:
    _service_with(fake)
    result = run("service", "update", "web", "-d", "--health-cmd", "pg_isready")
    assert result.exit_code == 0, result.output
    assert _updated_spec(fake).container.health == HealthCheck(cmd=("/bin/sh", "-c", "pg_isready"))


def test_update_no_healthcheck_removes_it(run: Callable[..., Result], fake: FakeClient) -> None:
    _service_with(fake, health=HealthCheck(tcp=80))
    result = run("service", "update", "web", "-d", "--no-healthcheck")
    assert result.exit_code == 0, result.output
    assert _updated_spec(fake).container.health is None


@pytest.mark.parametrize(
    ("health", "flags", "message"),
    [
        (None, ["--health-interval", "2s"], "--health-interval needs a health check"),
        (HealthCheck(tcp=80), ["--no-healthcheck", "--health-tcp", "81"], "--no-healthcheck"),
        (HealthCheck(tcp=80), ["--health-cmd", "true", "--health-tcp", "81"], "only one of"),
    ],
)
def test_update_bad_health_flags_send_nothing(
    run: Callable[..., Result],
    fake: FakeClient,
    health: HealthCheck | None,
    flags: list[str],
    message: str,
) -> None:
    _service_with(fake, health=health)
    result = run("service", "update", "web", *flags)
    assert message in assert_one_error_line(result)
    assert "update_service" not in fake.names()


def test_service_ps_shows_health(run: Callable[..., Result], fake: FakeClient) -> None:
    fake.converge = False
    web = fake.add(make_service("web", id="svc-web", replicas=3))
    fake.nodes = [make_node("node-1", hostname="alpha")]
    now = __import__("time").time()

    def task(slot: int, state: TaskState, health: Health) -> Task:
        made = make_task(web, id=f"t{slot}", slot=slot, node_id="node-1", state=state)
        status = TaskStatus(state, timestamp=now - 5, health=health)
        return dataclasses.replace(made, status=status)

    fake.tasks = [
        task(1, TaskState.RUNNING, Health.HEALTHY),
        task(2, TaskState.STARTING, Health.STARTING),
        task(3, TaskState.RUNNING, Health.NONE),
    ]
    result = run("service", "ps", "web")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "running (healthy) 5 seconds ago" in lines[1]
    assert "starting (starting) 5 seconds ago" in lines[2]
    assert "running 5 seconds ago" in lines[3] and "(" not in lines[3]


# -- logs and tasks ---------------------------------------------------------------------


def _line(task: str, node: str, text: bytes, timestamp: float = 0.0) -> LogLine:
    return LogLine(f"id-{task}", task, node, timestamp, "stdout", text)


def test_service_logs_prefix_each_line_with_task_and_node(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    fake.nodes = [make_node("node-1", hostname="alpha")]
    fake.log_lines = [
        _line("web.1", "node-1", b"GET / 200"),
        dataclasses.replace(_line("web.2", "node-0123456789abcdef", b"oops"), stream="stderr"),
        _line("web.1", "node-1", b"bad \xff byte"),
    ]
    result = run("service", "logs", "web")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "web.1@alpha    | GET / 200",
        "web.2@node-0123456    | oops",
        "web.1@alpha    | bad \ufffd byte",
    ]
    assert result.stderr == ""
    assert ("logs", ("web", "", False, 0)) in fake.calls
    assert fake.names().count("list_nodes") == 1


def test_logs_with_timestamps_follow_and_tail(run: Callable[..., Result], fake: FakeClient) -> None:
    fake.log_lines = [_line("web.1", "node-1", b"hello", timestamp=1736139845.123456)]
    result = run("service", "logs", "web", "-f", "--tail", "20", "-t")
    assert result.exit_code == 0, result.output
    # The fake's stream ends, and so does the follow.
    assert result.stdout == "web.1@node-1    | 2025-01-06T05:04:05.123456Z hello\n"
    assert ("logs", ("web", "", True, 20)) in fake.calls


def test_logs_ctrl_c_ends_a_follow_quietly(run: Callable[..., Result], fake: FakeClient) -> None:
    fake.log_lines = [_line("web.1", "n", b"one"), KeyboardInterrupt(), _line("web.1", "n", b"x")]
    result = run("service", "logs", "web", "--follow")
    assert result.exit_code == 0, result.output
    assert result.stdout == "web.1@n    | one\n"
    assert result.stderr == ""


def test_logs_of_a_service_without_tasks_print_nothing(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    result = run("service", "logs", "web")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert fake.names() == ["logs"]


def test_logs_errors_are_one_line(run: Callable[..., Result], fake: FakeClient) -> None:
    fake.log_lines = [NotFound("service 'nope' not found")]
    result = run("service", "logs", "nope")
    assert assert_one_error_line(result) == "Error: service 'nope' not found"
    assert_one_error_line(run("service", "logs", "web", "--tail", "0"), exit_code=2)


def test_task_logs_and_inspect(run: Callable[..., Result], fake: FakeClient) -> None:
    fake.add(make_service("web", id="svc-web"))
    task = fake.tasks[0]
    fake.log_lines = [_line(task.name, "node-1", b"ready")]
    result = run("task", "logs", task.id, "--tail", "all", "-f")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{task.name}@node-1    | ready\n"
    assert ("logs", ("", task.id, True, 0)) in fake.calls
    assert json.loads(run("task", "inspect", task.id).stdout) == [to_dict(task)]
    assert yaml.safe_load(run("task", "inspect", task.id, "-o", "yaml").stdout) == [to_dict(task)]


# -- image import (runs on the node: no manager) ---------------------------------------


class _FakeRuntime:
    instances: list[_FakeRuntime] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.imported: list[Path] = []
        self.closed = False
        _FakeRuntime.instances.append(self)

    async def import_archive(self, path: Path) -> list[str]:
        self.imported.append(path)
        if path.name == "broken.tar":
            raise InvalidArgument(f"{path}: not an OCI archive (no index.json)")
        return ["docker.io/library/app:1.0", "registry.local:5000/tools:latest"]

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_runtime(monkeypatch: pytest.MonkeyPatch) -> type[_FakeRuntime]:
    module = types.ModuleType("warren.agent.containerd.runtime")
    module.ContainerdRuntime = _FakeRuntime  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "warren.agent.containerd.runtime", module)
    monkeypatch.setattr(_FakeRuntime, "instances", [])
    return _FakeRuntime


def test_image_import_loads_the_archive_locally(
    run: Callable[..., Result],
    fake: FakeClient,
    fake_runtime: type[_FakeRuntime],
    tmp_path: Path,
) -> None:
    from warren.registry.client import RegistryConfig

    archive = tmp_path / "app.tar"
    archive.write_bytes(b"")
    result = run(
        "image", "import", str(archive), "--containerd-socket", "/tmp/c.sock",
        "--data-dir", str(tmp_path / "data"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "docker.io/library/app:1.0\nregistry.local:5000/tools:latest\n"
    (runtime,) = fake_runtime.instances
    assert runtime.kwargs == {
        "socket": "/tmp/c.sock",
        "namespace": "warren",
        "state_dir": tmp_path / "data" / "containerd",
        "registry": RegistryConfig(),
    }
    assert runtime.imported == [archive]
    assert runtime.closed
    assert fake.calls == []


def test_image_import_errors(
    run: Callable[..., Result], fake_runtime: type[_FakeRuntime], tmp_path: Path
) -> None:
    missing = run("image", "import", str(tmp_path / "nope.tar"))
    assert "does not exist" in assert_one_error_line(missing, exit_code=2)
    assert fake_runtime.instances == []
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"")
    result = run("image", "import", str(broken), "--containerd-namespace", "other")
    assert "not an OCI archive" in assert_one_error_line(result)
    (runtime,) = fake_runtime.instances
    assert runtime.kwargs["namespace"] == "other"
    assert runtime.closed


# -- daemon runtime flags ----------------------------------------------------------------


def test_daemons_take_runtime_and_registry_flags(
    run: Callable[..., Result], tmp_path: Path
) -> None:
    started: list[Any] = []
    daemons = recording_daemons(started)
    auths = tmp_path / "auths.json"
    auths.write_text('{"auths": {}}')
    flags = [
        "--data-dir", str(tmp_path / "d"), "--runtime", "sim",
        "--containerd-socket", "/run/k3s/containerd.sock", "--containerd-namespace", "edge",
        "--insecure-registry", "10.0.0.5:5000", "--insecure-registry", "registry.local",
        "--registry-config", str(auths), "--wireguard-port", "51999", "--network-plane", "sim",
    ]  # fmt: skip
    assert run("cluster", "init", *flags, daemons=daemons).exit_code == 0
    worker = run("worker", "join", "--token", TOKEN, "--manager", "m:1", *flags, daemons=daemons)
    assert worker.exit_code == 0
    for options in started:
        assert (options.runtime, options.containerd_socket, options.containerd_namespace) == (
            "sim",
            "/run/k3s/containerd.sock",
            "edge",
        )
        assert options.insecure_registries == ["10.0.0.5:5000", "registry.local"]
        assert options.registry_config == auths
        assert (options.wireguard_port, options.network_plane) == (51999, "sim")
    assert [type(o) for o in started] == [ManagerOptions, WorkerOptions]


@pytest.mark.parametrize(
    "flags",
    [
        ["--insecure-registry", "http://10.0.0.5:5000"],
        ["--registry-config", "/nonexistent/auths.json"],
        ["--runtime", "docker"],
    ],
)
def test_bad_daemon_flags_are_refused(
    run: Callable[..., Result], tmp_path: Path, flags: list[str]
) -> None:
    started: list[Any] = []
    daemons = recording_daemons(started)
    result = run("worker", "join", "--data-dir", str(tmp_path), *flags, daemons=daemons)
    assert_one_error_line(result, exit_code=2)
    assert started == []


@pytest.mark.parametrize(
    "args",
    [
        ["service", "create", "p", "--image", "b", "--max-replicas-per-node", "2147483648"],
        ["service", "create", "p", "--image", "b", "--replicas", "100001"],
        ["service", "create", "p", "--image", "b", "--restart-max-attempts", "2147483648"],
        [
            "service",
            "create",
            "p",
            "--image",
            "b",
            "--health-cmd",
            "true",
            "--health-retries=" + "9" * 40,
        ],
        ["service", "create", "p", "--image", "b", "--limit-memory", "9" * 30],
        ["service", "create", "p", "--image", "b", "--reserve-cpu", "1e30"],
        ["service", "create", "p", "--image", "b", "--stop-grace-period", "9" * 400],
        ["service", "create", "p", "--image", "b", "--restart-delay", "9999999h"],
        ["service", "update", "web", "--replicas", "2147483648"],
        ["service", "scale", "web=2147483648"],
        ["service", "logs", "web", "--tail", "2147483648"],
    ],
    ids=lambda args: args[-2] if args[-2].startswith("-") else args[-1][:20],
)
def test_values_out_of_the_models_range_are_usage_errors(
    run: Callable[..., Result], fake: FakeClient, args: list[str]
) -> None:
    fake.add(make_service("web", id="svc-web"))
    result = run(*args)
    assert_one_error_line(result, exit_code=2)
    assert "protobuf" not in result.output.lower()
    assert fake.calls == []


# -- networks ---------------------------------------------------------------------------


def test_network_create_ls_inspect_rm(run: Callable[..., Result], fake: FakeClient) -> None:
    result = run("network", "create", "back", "--subnet", "10.40.0.0/16", "--label", "tier=db")
    assert result.exit_code == 0, result.output
    assert result.output == "net-back\n"
    assert fake.calls[0] == (
        "create_network",
        (NetworkSpec("back", "10.40.0.0/16", {"tier": "db"}),),
    )
    listing = run("network", "ls")
    assert listing.output.splitlines()[1].split() == ["net-back", "back", "10.40.0.0/16", "0"]
    inspected = json.loads(run("network", "inspect", "back").output)
    assert inspected[0]["subnet"] == "10.40.0.0/16"
    assert run("network", "rm", "back").exit_code == 0
    assert fake.networks == {}


def test_network_create_refuses_a_bad_subnet_before_sending(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    result = run("network", "create", "back", "--subnet", "10.40.0.0/33")
    assert "subnet" in assert_one_error_line(result)
    assert "create_network" not in fake.names()


def test_service_create_joins_networks_and_publishes_ports(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    result = run(
        "service", "create", "web", "--image", "nginx", "-d", "--network", "back",
        "--network", "front", "-p", "8080:80",
        "--publish", "published=53,target=53,protocol=udp,mode=host",
        "-p", "9000", "--endpoint-mode", "dnsrr",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    spec = fake.calls[0][1][0]
    assert spec.networks == ("back", "front")
    assert spec.endpoint == EndpointSpec(
        mode=EndpointMode.DNSRR,
        ports=(
            PortConfig(target=80, published=8080),
            PortConfig(target=53, published=53, protocol=PortProtocol.UDP, mode=PublishMode.HOST),
            PortConfig(target=9000),
        ),
    )


def test_service_create_network_host_is_host_networking(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    assert (
        run("service", "create", "agent", "--image", "x", "-d", "--network", "host").exit_code == 0
    )
    spec = fake.calls[0][1][0]
    assert spec.container.network_mode == NetworkMode.HOST and spec.networks == ()


def test_service_update_edits_networks_and_ports(
    run: Callable[..., Result], fake: FakeClient
) -> None:
    for name in ("back", "front"):
        fake.create_network(NetworkSpec(name))
    base = make_service("web", id="svc-web")
    ports = (PortConfig(target=80, published=8080), PortConfig(target=81, published=8081))
    spec = dataclasses.replace(
        base.spec, networks=("net-back",), endpoint=EndpointSpec(ports=ports)
    )
    fake.add(dataclasses.replace(base, spec=spec, version=3))
    result = run(
        "service", "update", "web", "-d", "--network-rm", "back", "--network-add", "front",
        "--publish-rm", "80", "--publish-add", "8082:82", "--endpoint-mode", "dnsrr",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    updated = _updated_spec(fake)
    assert updated.networks == ("net-front",)
    assert updated.endpoint == EndpointSpec(
        mode=EndpointMode.DNSRR,
        ports=(PortConfig(target=81, published=8081), PortConfig(target=82, published=8082)),
    )
    assert "unknown" in assert_one_error_line(
        run("service", "update", "web", "--network-add", "unknown")
    )
