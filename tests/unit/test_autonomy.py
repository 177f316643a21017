"""Worker autonomy: without a manager the agent restarts exited tasks in place.

The agent under test never opens a session, so it is disconnected unless a
test sets ``agent.connected``. Reports then wait in ``agent._unsent`` (the last
per task), which is what a manager would receive once the link heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from factories import GIB, make_service, make_task
from support import eventually

from warren.agent.agent import Agent
from warren.agent.executor import Ending, may_restart_locally
from warren.agent.runtime import ContainerConfig, ContainerState
from warren.agent.sim import SimRuntime
from warren.core.models import Resources, RestartCondition, RestartPolicy, Task, TaskStatus
from warren.core.states import TaskState
from warren.security.tls import IdentityFiles

S = TaskState
C = RestartCondition
RESTARTED = "restarted locally while disconnected"


def _task(
    task_id: str = "t1",
    condition: C = C.ANY,
    delay: float = 0.0,
    max_attempts: int = 0,
    window: float = 0.0,
    args: tuple[str, ...] = (),
    state: S = S.ASSIGNED,
) -> Task:
    policy = RestartPolicy(condition, delay, max_attempts, window)
    service = make_service("web", restart_policy=policy)
    service = replace(
        service, spec=replace(service.spec, container=replace(service.spec.container, args=args))
    )
    return make_task(service, id=task_id, node_id="n1", state=state)


@pytest.fixture
async def runtime() -> AsyncIterator[SimRuntime]:
    runtime = SimRuntime()
    try:
        yield runtime
    finally:
        await runtime.close()


def _make_agent(tmp_path: Path, runtime: SimRuntime) -> Agent:
    return Agent(
        node_id="n1",
        managers=[],
        identity=IdentityFiles(tmp_path / "identity"),  # unused: no session is opened
        runtime=runtime,
        data_dir=tmp_path / "data",
        hostname="w1",
        resources=Resources(2.0, GIB),
    )


class Recorded:
    """Every status the agent's executors report, in order (``_unsent`` keeps the last)."""

    def __init__(self, agent: Agent) -> None:
        self.items: list[tuple[str, TaskStatus]] = []
        self._forward = agent._on_status

    def __call__(self, task_id: str, status: TaskStatus) -> None:
        self.items.append((task_id, status))
        self._forward(task_id, status)

    def states(self, task_id: str = "t1") -> list[S]:
        return [s.state for tid, s in self.items if tid == task_id]


@pytest.fixture
async def agent(tmp_path: Path, runtime: SimRuntime) -> AsyncIterator[Agent]:
    agent = _make_agent(tmp_path, runtime)
    try:
        yield agent
    finally:
        for executor in agent.executors.values():
            await executor.close()
        for task in list(agent._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
def recorded(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> Recorded:
    recorder = Recorded(agent)
    # Executors take the callback when created: patch before any assignment.
    monkeypatch.setattr(agent, "_on_status", recorder)
    return recorder


def _queued(agent: Agent, task_id: str = "t1") -> TaskStatus | None:
    return agent._unsent.get(task_id)


def _queued_is(agent: Agent, state: S, message: str = "", task_id: str = "t1") -> bool:
    status = _queued(agent, task_id)
    return status is not None and status.state == state and status.message.startswith(message)


async def _container(runtime: SimRuntime, task_id: str = "t1") -> ContainerState | None:
    containers = {c.container_id: c.state for c in await runtime.list()}
    return containers.get(task_id)


async def _no_container(runtime: SimRuntime) -> bool:
    return await runtime.list() == []


async def _running(agent: Agent, task: Task) -> None:
    await agent.apply_assignments([task])
    await eventually(
        lambda: _queued_is(agent, S.RUNNING, task_id=task.id),
        2.0,
        "_queued_is(agent, S.RUNNING, task_id=task.id)",
    )


async def _restarted(agent: Agent, runtime: SimRuntime, count: int, task_id: str = "t1") -> bool:
    running = await _container(runtime, task_id) == ContainerState.RUNNING
    return running and _queued_is(agent, S.RUNNING, f"{RESTARTED} ({count})", task_id)


# --- the restart policy, locally -------------------------------------------------------

FAILED = Ending(S.FAILED, "exited", err="task exited with code 1", exit_code=1)
COMPLETE = Ending(S.COMPLETE, "finished", exit_code=0)


@pytest.mark.parametrize(
    ("condition", "ending", "allowed"),
    [
        (C.ANY, FAILED, True),
        (C.ANY, COMPLETE, True),
        (C.ON_FAILURE, FAILED, True),
        (C.ON_FAILURE, COMPLETE, False),
        (C.NONE, FAILED, False),
        (C.ANY, Ending(S.SHUTDOWN, "shut down"), False),
    ],
)
def test_the_condition_decides_which_endings_restart(
    condition: C, ending: Ending, allowed: bool
) -> None:
    assert may_restart_locally(RestartPolicy(condition), ending, [], 100.0) is allowed


def test_max_attempts_count_only_restarts_within_the_window() -> None:
    policy = RestartPolicy(max_attempts=2, window=10.0)
    assert may_restart_locally(policy, FAILED, [95.0], 100.0)
    assert not may_restart_locally(policy, FAILED, [95.0, 99.0], 100.0)
    assert may_restart_locally(policy, FAILED, [85.0, 99.0], 100.0)  # 85 left the window
    forever = RestartPolicy(max_attempts=2)
    assert not may_restart_locally(forever, FAILED, [0.0, 1.0], 1e9)


# --- the agent, disconnected -------------------------------------------------------------


async def test_a_crashed_task_runs_again_under_the_same_id(
    agent: Agent, runtime: SimRuntime, recorded: Recorded
) -> None:
    await _running(agent, _task())
    runtime.kill("t1")
    await eventually(lambda: _restarted(agent, runtime, 1), 2.0, "_restarted(agent, runtime, 1)")
    info = await runtime.inspect("t1")
    assert info.exit is None  # a new container: the old one exited with 137
    assert set(agent.executors) == {"t1"}
    assert agent.executors["t1"].local_restarts == 1
    # Never terminal on the way: a manager must not see a failure to replace.
    assert recorded.states() == [S.PREPARING, S.STARTING, S.RUNNING, S.RUNNING, S.RUNNING]
    assert [s.message for _, s in recorded.items[-2:]] == [
        "task exited with code 137; restarting locally in 0s",
        f"{RESTARTED} (1)",
    ]
    runtime.kill("t1")  # and again
    await eventually(lambda: _restarted(agent, runtime, 2), 2.0, "_restarted(agent, runtime, 2)")
    assert agent.tasks["t1"].status.state == S.RUNNING  # what the cache keeps


async def test_the_restart_delay_is_honoured(agent: Agent, runtime: SimRuntime) -> None:
    await _running(agent, _task(delay=0.3))
    runtime.kill("t1")
    killed = time.monotonic()
    message = "task exited with code 137; restarting locally in 0.3s"
    await eventually(
        lambda: _queued_is(agent, S.RUNNING, message), 2.0, "_queued_is(agent, S.RUNNING, message)"
    )
    await asyncio.sleep(0.15)
    assert await _container(runtime) is None  # removed, not restarted yet
    await eventually(lambda: _restarted(agent, runtime, 1), 2.0, "_restarted(agent, runtime, 1)")
    assert time.monotonic() - killed >= 0.3


async def test_max_attempts_within_the_window_then_failed(
    agent: Agent, runtime: SimRuntime
) -> None:
    await _running(agent, _task(max_attempts=2, window=60.0))
    for attempt in (1, 2):
        runtime.kill("t1")
        await eventually(
            lambda: _restarted(agent, runtime, attempt),  # noqa: B023
            2.0,
            f"restart {attempt}",
        )
    runtime.kill("t1")
    await eventually(lambda: _queued_is(agent, S.FAILED), 2.0, "_queued_is(agent, S.FAILED)")
    status = _queued(agent)
    assert status is not None
    assert (status.exit_code, status.err) == (137, "task exited with code 137")
    assert agent.executors["t1"].done
    await eventually(lambda: _no_container(runtime), 2.0, "_no_container(runtime)")


async def test_attempts_that_left_the_window_no_longer_count(
    agent: Agent, runtime: SimRuntime
) -> None:
    await _running(agent, _task(max_attempts=1, window=0.3))
    runtime.kill("t1")
    await eventually(lambda: _restarted(agent, runtime, 1), 2.0, "_restarted(agent, runtime, 1)")
    await asyncio.sleep(0.35)
    runtime.kill("t1")
    await eventually(lambda: _restarted(agent, runtime, 2), 2.0, "_restarted(agent, runtime, 2)")


async def test_condition_none_reports_failed(agent: Agent, runtime: SimRuntime) -> None:
    await _running(agent, _task(condition=C.NONE))
    runtime.kill("t1")
    await eventually(lambda: _queued_is(agent, S.FAILED), 2.0, "_queued_is(agent, S.FAILED)")
    await eventually(lambda: _no_container(runtime), 2.0, "_no_container(runtime)")
    assert agent.executors["t1"].local_restarts == 0


async def test_on_failure_completes_a_task_that_exits_0(
    agent: Agent, runtime: SimRuntime, recorded: Recorded
) -> None:
    await agent.apply_assignments([_task(condition=C.ON_FAILURE, args=("exit", "0", "0.05"))])
    await eventually(lambda: _queued_is(agent, S.COMPLETE), 2.0, "_queued_is(agent, S.COMPLETE)")
    assert recorded.states() == [S.PREPARING, S.STARTING, S.RUNNING, S.COMPLETE]
    await eventually(lambda: _no_container(runtime), 2.0, "_no_container(runtime)")


async def test_on_failure_restarts_a_crash(agent: Agent, runtime: SimRuntime) -> None:
    await _running(agent, _task(condition=C.ON_FAILURE))
    runtime.kill("t1")
    await eventually(lambda: _restarted(agent, runtime, 1), 2.0, "_restarted(agent, runtime, 1)")


async def test_a_rejected_restart_is_reported(agent: Agent, runtime: SimRuntime) -> None:
    await _running(agent, _task(delay=0.1))
    runtime.kill("t1")
    await eventually(
        lambda: _queued_is(agent, S.RUNNING, "task exited"),
        2.0,
        "_queued_is(agent, S.RUNNING, 'task exited')",
    )
    # The ID is taken when the restart creates the container.
    await runtime.create(ContainerConfig(container_id="t1", image="x"))
    await eventually(
        lambda: _queued_is(agent, S.REJECTED, "could not restart"),
        2.0,
        "_queued_is(agent, S.REJECTED, 'could not restart')",
    )


# --- connected, reconnecting, reconciling ------------------------------------------------


async def test_a_connected_agent_reports_the_failure_and_does_not_restart(
    agent: Agent, runtime: SimRuntime, recorded: Recorded
) -> None:
    agent.connected.set()  # the manager replaces the task
    await _running(agent, _task())
    runtime.kill("t1")
    await eventually(lambda: _queued_is(agent, S.FAILED), 2.0, "_queued_is(agent, S.FAILED)")
    assert recorded.states() == [S.PREPARING, S.STARTING, S.RUNNING, S.FAILED]
    await asyncio.sleep(0.05)
    assert await _no_container(runtime)
    assert agent.executors["t1"].local_restarts == 0


async def test_reconnecting_during_the_delay_still_restarts(
    agent: Agent, runtime: SimRuntime
) -> None:
    await _running(agent, _task(delay=0.2))
    runtime.kill("t1")
    await eventually(
        lambda: _queued_is(agent, S.RUNNING, "task exited"),
        2.0,
        "_queued_is(agent, S.RUNNING, 'task exited')",
    )
    agent.connected.set()  # decided at exit time: the restart goes on
    await eventually(lambda: _restarted(agent, runtime, 1), 2.0, "_restarted(agent, runtime, 1)")


async def test_a_task_the_managers_replaced_is_stopped(
    agent: Agent, runtime: SimRuntime, recorded: Recorded
) -> None:
    await _running(agent, _task())
    runtime.kill("t1")
    await eventually(lambda: _restarted(agent, runtime, 1), 2.0, "_restarted(agent, runtime, 1)")
    agent.connected.set()
    # The node was marked down meanwhile: its tasks were replaced elsewhere.
    await agent.apply_assignments([])
    await eventually(lambda: _queued_is(agent, S.SHUTDOWN), 2.0, "_queued_is(agent, S.SHUTDOWN)")
    assert await _no_container(runtime)
    assert agent.executors == {}
    assert recorded.states()[-1] == S.SHUTDOWN


async def test_a_task_the_managers_replaced_during_the_delay_is_not_restarted(
    agent: Agent, runtime: SimRuntime
) -> None:
    await _running(agent, _task(delay=0.2))
    runtime.kill("t1")
    await eventually(
        lambda: _queued_is(agent, S.RUNNING, "task exited"),
        2.0,
        "_queued_is(agent, S.RUNNING, 'task exited')",
    )
    await agent.apply_assignments([])
    await eventually(lambda: _queued_is(agent, S.SHUTDOWN), 2.0, "_queued_is(agent, S.SHUTDOWN)")
    await asyncio.sleep(0.3)
    assert await _no_container(runtime)


# --- across the agent's own restart ----------------------------------------------------


async def test_recover_restarts_a_task_whose_container_is_gone(
    agent: Agent, runtime: SimRuntime
) -> None:
    agent.cache.save({"t1": _task(state=S.RUNNING)})
    await agent.recover()
    await eventually(lambda: _restarted(agent, runtime, 1), 2.0, "_restarted(agent, runtime, 1)")
    status = _queued(agent)
    assert status is not None and status.err == ""


async def test_a_lost_task_the_managers_replaced_is_shut_down_not_restarted(
    agent: Agent, runtime: SimRuntime
) -> None:
    agent.cache.save({"t1": _task(state=S.RUNNING)})
    await agent.recover()
    await agent.apply_assignments([])  # before the executor even ran
    await eventually(lambda: _queued_is(agent, S.SHUTDOWN), 2.0, "_queued_is(agent, S.SHUTDOWN)")
    await asyncio.sleep(0.05)
    assert await _no_container(runtime)


async def test_recover_restarts_a_task_that_exited_while_the_agent_was_down(
    agent: Agent, runtime: SimRuntime
) -> None:
    task = _task(state=S.RUNNING, condition=C.ON_FAILURE)
    agent.cache.save({"t1": task})
    await runtime.create(ContainerConfig(container_id="t1", image=task.spec.container.image))
    await runtime.start("t1")
    runtime.kill("t1")
    await agent.recover()
    await eventually(lambda: _restarted(agent, runtime, 1), 2.0, "_restarted(agent, runtime, 1)")


async def test_recover_reports_a_task_that_completed_while_down_under_on_failure(
    agent: Agent, runtime: SimRuntime
) -> None:
    task = _task(state=S.RUNNING, condition=C.ON_FAILURE)
    agent.cache.save({"t1": task})
    await runtime.create(ContainerConfig(container_id="t1", image=task.spec.container.image))
    await runtime.start("t1")
    await runtime.stop("t1", 0)  # exit 0
    await agent.recover()
    await eventually(lambda: _queued_is(agent, S.COMPLETE), 2.0, "_queued_is(agent, S.COMPLETE)")
    await eventually(lambda: _no_container(runtime), 2.0, "_no_container(runtime)")


async def test_a_restarted_agent_keeps_restarting_and_reports_running(
    tmp_path: Path, runtime: SimRuntime
) -> None:
    first = _make_agent(tmp_path, runtime)
    await _running(first, _task())
    first._save_cache()
    for executor in first.executors.values():
        await executor.close()
    await runtime.remove("t1")  # lost while no agent ran
    second = _make_agent(tmp_path, runtime)
    try:
        await second.recover()
        await eventually(
            lambda: _restarted(second, runtime, 1), 2.0, "_restarted(second, runtime, 1)"
        )
        runtime.kill("t1")
        await eventually(
            lambda: _restarted(second, runtime, 2), 2.0, "_restarted(second, runtime, 2)"
        )
    finally:
        for executor in second.executors.values():
            await executor.close()
        for task in list(second._background) + list(first._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- a cut noticed late -------------------------------------------------------------


async def test_an_end_reported_just_before_the_link_died_is_restarted_locally(
    agent: Agent, runtime: SimRuntime
) -> None:
    task = _task()
    agent.connected.set()  # the exit happens while the agent still believes it is connected
    await _running(agent, task)
    runtime.kill("t1")
    await eventually(lambda: _queued_is(agent, S.FAILED), 2.0, "_queued_is(agent, S.FAILED)")
    agent.connected.clear()  # the keepalive noticed the cut a moment later
    agent._revive_unacknowledged_ends()
    await eventually(lambda: _restarted(agent, runtime, 1), 2.0, "_restarted(agent, runtime, 1)")


async def test_an_old_end_is_not_revived(agent: Agent, runtime: SimRuntime) -> None:
    task = _task()
    agent.connected.set()
    await _running(agent, task)
    runtime.kill("t1")
    await eventually(lambda: _queued_is(agent, S.FAILED), 2.0, "_queued_is(agent, S.FAILED)")
    agent.connected.clear()
    assert not agent.executors["t1"].revive_if_recent(within=0.0)
    assert _queued_is(agent, S.FAILED)
