"""Worker side: TaskExecutor on SimRuntime, Agent assignments, cache and recovery."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from factories import GIB, make_service, make_task
from support import eventually

from warren.agent.agent import Agent, WireGuardIdentity
from warren.agent.cache import TaskCache
from warren.agent.executor import TaskExecutor
from warren.agent.runtime import ContainerConfig, ContainerState
from warren.agent.sim import SimRuntime
from warren.core.errors import InvalidArgument
from warren.core.models import Resources, RestartCondition, RestartPolicy, Task, TaskStatus
from warren.core.node_view import NetworkView, ViewEndpoint, ViewNetwork, ViewService
from warren.core.states import TaskState
from warren.proto import warren_pb2 as pb
from warren.proto.convert import to_message
from warren.security.tls import IdentityFiles

S = TaskState


def _task(
    task_id: str = "t1",
    image: str = "nginx:1.27",
    args: tuple[str, ...] = (),
    state: S = S.ASSIGNED,
    slot: int = 1,
) -> Task:
    service = make_service("web")
    container = replace(service.spec.container, image=image, args=args)
    service = replace(service, spec=replace(service.spec, container=container))
    return make_task(service, id=task_id, slot=slot, node_id="n1", state=state)


async def _no_containers(runtime: SimRuntime) -> bool:
    return await runtime.list() == []


class Reports:
    """Collects an executor's status reports."""

    def __init__(self) -> None:
        self.items: list[tuple[str, TaskStatus]] = []

    def __call__(self, task_id: str, status: TaskStatus) -> None:
        self.items.append((task_id, status))

    @property
    def states(self) -> list[S]:
        return [status.state for _, status in self.items]

    @property
    def last(self) -> TaskStatus:
        return self.items[-1][1]

    async def wait_for(self, state: S) -> TaskStatus:
        await eventually(lambda: state in self.states, 2.0, f"a {state.value} report")
        return self.last


@pytest.fixture
async def runtime() -> AsyncIterator[SimRuntime]:
    runtime = SimRuntime()
    try:
        yield runtime
    finally:
        await runtime.close()


Start = Callable[[Task], tuple[TaskExecutor, Reports]]


@pytest.fixture
async def start(runtime: SimRuntime) -> AsyncIterator[Start]:
    """Starts an executor with its own report collector; closes them all at the end."""
    made: list[TaskExecutor] = []

    def start(task: Task) -> tuple[TaskExecutor, Reports]:
        reports = Reports()
        executor = TaskExecutor(task, runtime, reports)
        made.append(executor)
        executor.start()
        return executor, reports

    try:
        yield start
    finally:
        for executor in made:
            await executor.close()


# --- TaskExecutor ------------------------------------------------------------------


async def test_a_task_goes_preparing_starting_running(runtime: SimRuntime, start: Start) -> None:
    executor, reports = start(_task(image="redis:7"))
    status = await reports.wait_for(S.RUNNING)
    assert reports.states == [S.PREPARING, S.STARTING, S.RUNNING]
    assert {task_id for task_id, _ in reports.items} == {"t1"}
    assert status.container_id == "t1"
    assert executor.state == S.RUNNING
    assert not executor.done
    info = await runtime.inspect("t1")
    assert (info.state, info.image) == (ContainerState.RUNNING, "redis:7")
    assert info.labels["warren.task.id"] == "t1"
    assert info.labels["warren.node.id"] == "n1"


async def test_a_killed_container_fails_with_exit_137(runtime: SimRuntime, start: Start) -> None:
    executor, reports = start(_task())
    await reports.wait_for(S.RUNNING)
    runtime.kill("t1")
    status = await reports.wait_for(S.FAILED)
    assert status.exit_code == 137
    assert status.err == "task exited with code 137"
    assert executor.done
    # Removed once it ended.
    await eventually(lambda: _no_containers(runtime), 2.0, "_no_containers(runtime)")


async def test_stop_shuts_a_running_task_down(runtime: SimRuntime, start: Start) -> None:
    executor, reports = start(_task())
    await reports.wait_for(S.RUNNING)
    await executor.stop()
    status = await reports.wait_for(S.SHUTDOWN)
    assert (status.exit_code, status.err) == (0, "")
    assert reports.states == [S.PREPARING, S.STARTING, S.RUNNING, S.SHUTDOWN]
    await executor.stop()  # a second stop is a no-op
    assert reports.states.count(S.SHUTDOWN) == 1


async def test_stop_before_the_runner_starts_reports_shutdown_without_a_container(
    runtime: SimRuntime,
) -> None:
    reports = Reports()
    executor = TaskExecutor(_task(), runtime, reports)
    executor.start()
    try:
        await executor.stop()
        assert reports.states == [S.SHUTDOWN]
        assert reports.last.message == "shut down before start"
        await asyncio.sleep(0.01)
        assert await runtime.list() == []
    finally:
        await executor.close()


async def test_a_missing_image_is_rejected(runtime: SimRuntime, start: Start) -> None:
    _, reports = start(_task(image="registry.local/notfound:1"))
    status = await reports.wait_for(S.REJECTED)
    assert reports.states == [S.PREPARING, S.REJECTED]
    assert status.err == "image not found: registry.local/notfound:1"
    assert await runtime.list() == []


async def test_a_container_exiting_0_completes(
    start: Start,
) -> None:
    _, reports = start(_task(args=("exit", "0", "0.05")))
    status = await reports.wait_for(S.COMPLETE)
    assert reports.states == [S.PREPARING, S.STARTING, S.RUNNING, S.COMPLETE]
    assert (status.exit_code, status.err) == (0, "")


async def test_a_container_exiting_non_zero_fails(
    start: Start,
) -> None:
    _, reports = start(_task(args=("exit", "3", "0.01")))
    status = await reports.wait_for(S.FAILED)
    assert (status.exit_code, status.err) == (3, "task exited with code 3")


async def test_a_container_that_cannot_start_is_rejected(runtime: SimRuntime, start: Start) -> None:
    await runtime.create(ContainerConfig(container_id="t1", image="x"))  # the ID is taken
    _, reports = start(_task())
    status = await reports.wait_for(S.REJECTED)
    assert "already exists" in status.err


# --- TaskCache ------------------------------------------------------------------------


def test_task_cache_round_trip(tmp_path: Path) -> None:
    cache = TaskCache(tmp_path / "sub" / "tasks.json")
    tasks = {t.id: t for t in (_task("a", slot=1), _task("b", state=S.RUNNING, slot=2))}
    cache.save(tasks)
    assert TaskCache(cache.path).load() == tasks
    assert not cache.path.with_suffix(".tmp").exists()


def test_task_cache_without_a_file_is_empty(tmp_path: Path) -> None:
    assert TaskCache(tmp_path / "tasks.json").load() == {}


def test_an_unreadable_task_cache_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    path.write_text("{not json")
    with pytest.raises(InvalidArgument, match="unreadable task cache"):
        TaskCache(path).load()


# --- Agent ------------------------------------------------------------------------------


@pytest.fixture
async def agent(tmp_path: Path, runtime: SimRuntime) -> AsyncIterator[Agent]:
    agent = Agent(
        node_id="n1",
        managers=[],
        identity=IdentityFiles(tmp_path / "identity"),  # unused: no session is opened
        runtime=runtime,
        data_dir=tmp_path / "data",
        hostname="w1",
        resources=Resources(2.0, GIB),
    )
    try:
        yield agent
    finally:
        for executor in agent.executors.values():
            await executor.close()
        for task in list(agent._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _state(agent: Agent, task_id: str) -> S | None:
    task = agent.tasks.get(task_id)
    return None if task is None else task.status.state


async def _containers(runtime: SimRuntime) -> dict[str, ContainerState]:
    return {c.container_id: c.state for c in await runtime.list()}


async def _containers_are(runtime: SimRuntime, expected: dict[str, ContainerState]) -> bool:
    return await _containers(runtime) == expected


async def test_assigned_tasks_start(agent: Agent, runtime: SimRuntime) -> None:
    await agent.apply_assignments([_task("a", slot=1), _task("b", slot=2)])
    assert set(agent.executors) == {"a", "b"}
    await eventually(
        lambda: _state(agent, "a") == _state(agent, "b") == S.RUNNING,
        2.0,
        "_state(agent, 'a') == _state(agent, 'b') == S.RUNNING",
    )
    assert await _containers(runtime) == {"a": ContainerState.RUNNING, "b": ContainerState.RUNNING}
    # No session: the reports wait to be sent.
    assert {tid: s.state for tid, s in agent._unsent.items()} == {"a": S.RUNNING, "b": S.RUNNING}


async def test_the_same_assignment_twice_starts_one_container(
    agent: Agent, runtime: SimRuntime
) -> None:
    await agent.apply_assignments([_task("a")])
    await eventually(
        lambda: _state(agent, "a") == S.RUNNING, 2.0, "_state(agent, 'a') == S.RUNNING"
    )
    await agent.apply_assignments([_task("a")])  # the manager's copy is still ASSIGNED
    await asyncio.sleep(0.02)
    assert await _containers(runtime) == {"a": ContainerState.RUNNING}
    assert _state(agent, "a") == S.RUNNING  # our fresher status is kept


async def test_a_task_missing_from_the_next_set_is_stopped(
    agent: Agent, runtime: SimRuntime
) -> None:
    await agent.apply_assignments([_task("a", slot=1), _task("b", slot=2)])
    await eventually(
        lambda: _state(agent, "a") == _state(agent, "b") == S.RUNNING,
        2.0,
        "_state(agent, 'a') == _state(agent, 'b') == S.RUNNING",
    )
    await agent.apply_assignments([_task("b", slot=2)])
    assert set(agent.executors) == {"b"}
    assert "a" not in agent.tasks
    await eventually(
        lambda: "a" in agent._unsent and agent._unsent["a"].state == S.SHUTDOWN,
        2.0,
        "'a' in agent._unsent and agent._unsent['a'].state == S.SHUTDOWN",
    )
    await eventually(
        lambda: _containers_are(runtime, {"b": ContainerState.RUNNING}),
        2.0,
        "_containers_are(runtime, {'b': ContainerState.RUNNING})",
    )


async def test_a_task_told_to_shut_down_is_stopped(agent: Agent, runtime: SimRuntime) -> None:
    task = _task("a")
    await agent.apply_assignments([task])
    await eventually(
        lambda: _state(agent, "a") == S.RUNNING, 2.0, "_state(agent, 'a') == S.RUNNING"
    )
    await agent.apply_assignments([replace(task, desired_state=S.SHUTDOWN)])
    await eventually(
        lambda: _state(agent, "a") == S.SHUTDOWN, 2.0, "_state(agent, 'a') == S.SHUTDOWN"
    )
    await eventually(lambda: _no_containers(runtime), 2.0, "_no_containers(runtime)")
    assert agent.tasks["a"].desired_state == S.SHUTDOWN


async def test_a_task_shut_down_before_it_started_is_reported_without_running(
    agent: Agent, runtime: SimRuntime
) -> None:
    await agent.apply_assignments([replace(_task("a"), desired_state=S.SHUTDOWN)])
    assert agent.executors == {}
    assert _state(agent, "a") == S.SHUTDOWN
    assert await runtime.list() == []


async def test_a_task_the_manager_thinks_runs_here_but_does_not_is_failed(
    agent: Agent, runtime: SimRuntime
) -> None:
    await agent.apply_assignments([_task("a", state=S.RUNNING)])
    assert agent.executors == {}
    assert agent._unsent["a"].state == S.FAILED
    assert agent._unsent["a"].err == "not running on this worker"
    assert await runtime.list() == []


async def test_recover_reports_a_lost_container_as_failed_without_restarts(
    agent: Agent, runtime: SimRuntime
) -> None:
    # Restarting lost tasks in place is tests/unit/test_autonomy.py's subject.
    task = _task("a", state=S.RUNNING)
    never = RestartPolicy(condition=RestartCondition.NONE)
    task = replace(task, spec=replace(task.spec, restart=never))
    agent.cache.save({"a": task})
    await agent.recover()
    await eventually(lambda: _state(agent, "a") == S.FAILED, 2.0, "_state(agent, 'a') == S.FAILED")
    status = agent._unsent["a"]
    assert status.state == S.FAILED
    assert status.err == "container lost while the worker was down"
    assert agent.executors["a"].done
    assert await runtime.list() == []


async def test_recover_reattaches_to_a_running_container(agent: Agent, runtime: SimRuntime) -> None:
    task = _task("a", state=S.RUNNING)
    agent.cache.save({"a": task})
    await runtime.create(ContainerConfig(container_id="a", image=task.spec.container.image))
    await runtime.start("a")
    await agent.recover()
    assert agent._unsent == {}
    assert agent.executors["a"].state == S.RUNNING
    agent.connected.set()  # a manager hears of the exit and replaces the task
    runtime.kill("a")
    await eventually(lambda: _state(agent, "a") == S.FAILED, 2.0, "_state(agent, 'a') == S.FAILED")
    assert agent.tasks["a"].status.exit_code == 137


async def test_recover_removes_containers_no_task_explains(
    agent: Agent, runtime: SimRuntime
) -> None:
    await runtime.create(ContainerConfig(container_id="stray", image="x"))
    await runtime.start("stray")
    agent.cache.save({"early": _task("early", state=S.ASSIGNED)})
    await agent.recover()
    assert await runtime.list() == []
    assert agent.executors == {}  # not started yet: it waits for the manager


# --- the node's share of networking: its WireGuard identity, the network view ------------

_KEY = base64.b64encode(b"w" * 32).decode()
_VIEW = NetworkView(
    revision=3,
    networks=(ViewNetwork("net-a", "front", "10.32.0.0/16", ("10.32.64.0/24",)),),
    services=(
        ViewService(
            "s1",
            "web",
            networks=("net-a",),
            endpoints=(ViewEndpoint("t1", "n1", "net-a", "10.32.64.2/24"),),
        ),
    ),
)


async def test_the_agent_registers_its_wireguard_identity_and_hands_views_over(
    tmp_path: Path, runtime: SimRuntime
) -> None:
    views: list[NetworkView] = []

    async def take(view: NetworkView) -> None:
        views.append(view)

    agent = Agent(
        node_id="n1",
        managers=[],
        identity=IdentityFiles(tmp_path / "identity"),  # unused: no session is opened
        runtime=runtime,
        data_dir=tmp_path / "data",
        hostname="w1",
        address="192.168.1.1",
        resources=Resources(2.0, GIB),
        wireguard=WireGuardIdentity(public_key=_KEY, port=51820),
        on_network_view=take,
    )
    register = agent.registration()
    assert (register.hostname, register.address) == ("w1", "192.168.1.1")
    assert (register.wireguard_public_key, register.wireguard_port) == (_KEY, 51820)
    message = pb.ManagerMessage(network_view=to_message(_VIEW, pb.NetworkView))
    await agent._handle(pb.ManagerMessage.FromString(message.SerializeToString()))
    assert views == [_VIEW]


async def test_an_agent_serving_no_network_publishes_no_identity_and_ignores_views(
    agent: Agent,
) -> None:
    register = agent.registration()
    assert (register.wireguard_public_key, register.wireguard_port) == ("", 0)
    await agent._handle(pb.ManagerMessage(network_view=to_message(_VIEW, pb.NetworkView)))
    assert agent.tasks == {} and agent.executors == {}
