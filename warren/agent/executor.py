"""One task's life on a node: pull, create, start, health, wait, stop, report.

Every state change is reported through a callback as it happens; the agent
forwards the reports to the manager (and its cache). A task with a health
check stays ``starting`` until its first healthy probe; once unhealthy beyond
its retries it is killed and reported ``failed``, and the restart policy
replaces it.

Worker autonomy: while the agent has no manager to report to, an exited task
is restarted *in place* (same task ID, a new container) as its restart policy
allows, and stays ``running`` to the manager. A manager that saw the exit
would replace the task with a new one; reporting it running instead leaves
exactly one task in its slot when the link heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from warren.agent.health import HealthMonitor
from warren.agent.runtime import ContainerConfig, ContainerNames, ExitStatus, Runtime
from warren.core.errors import FailedPrecondition, ImageNotFound, NotFound, WarrenError
from warren.core.models import (
    Health,
    NetworkMode,
    RestartPolicy,
    Task,
    TaskStatus,
)
from warren.core.restart import decide_restart
from warren.core.states import TaskState

log = logging.getLogger(__name__)

Reporter = Callable[[str, TaskStatus], None]
# Asked when a container exits: may the executor restart it itself (no manager)?
RestartGate = Callable[[], bool]


def _never() -> bool:
    return False


class TaskNetworking(Protocol):
    """Plugs tasks' containers into Warren's networks (the node's network controller)."""

    async def prepare(self, task: Task) -> ContainerNames:
        """The container's name settings (Warren's DNS), before it is created."""
        ...

    async def attach(self, task: Task, netns: str) -> ContainerNames:
        """Attach the created container's namespace to the task's networks."""
        ...

    async def detach(self, task_id: str) -> None:
        """Remove what ``attach`` made for the task (nothing if nothing)."""
        ...


def needs_networking(task: Task) -> bool:
    """Whether a task's container joins Warren's networks (it has addresses and
    its own network namespace)."""
    return bool(task.networks) and task.spec.container.network_mode != NetworkMode.HOST


@dataclass(frozen=True)
class Ending:
    """How a task ends when its container is gone: the terminal status to report."""

    state: TaskState
    message: str
    err: str = ""
    exit_code: int | None = None


def may_restart_locally(
    policy: RestartPolicy, ending: Ending, restarts: list[float], now: float
) -> bool:
    """Whether ``policy`` allows another in-place restart after ``ending``.

    ``restarts`` holds the (monotonic) times of earlier local restarts. The
    manager's rule decides (``warren.core.restart``); only a container's own
    exit restarts locally, and not when max_attempts are used up for now: the
    worker does not hold a task back waiting for the window, it reports the
    end and a manager restarts the task when the window allows.
    """
    if ending.state not in (TaskState.FAILED, TaskState.COMPLETE):
        return False
    decision = decide_restart(policy, ending.state, now, restarts, now)
    return not decision.gives_up and not decision.capped


def container_config(task: Task) -> ContainerConfig:
    spec = task.spec.container
    limits = task.spec.resources.limits
    return ContainerConfig(
        container_id=task.id,
        image=spec.image,
        entrypoint=spec.entrypoint,
        args=spec.args,
        env=dict(spec.env),
        labels={
            "warren.task.id": task.id,
            "warren.task.name": task.name,
            "warren.service.id": task.service_id,
            "warren.service.name": task.service_name,
            "warren.node.id": task.node_id,
        },
        workdir=spec.workdir,
        user=spec.user,
        cpu_limit=limits.cpus,
        memory_limit_bytes=limits.memory_bytes,
        read_only=spec.read_only,
        init=spec.init,
        host_network=spec.network_mode == NetworkMode.HOST,
        stop_signal=spec.stop_signal,
    )


class TaskExecutor:
    def __init__(
        self,
        task: Task,
        runtime: Runtime,
        report: Reporter,
        can_restart_locally: RestartGate = _never,
        networking: TaskNetworking | None = None,
    ) -> None:
        self.task = task
        self.runtime = runtime
        # Only for a task on Warren's networks: None leaves its namespace alone.
        self._networking = networking if needs_networking(task) else None
        self._report = report
        self._can_restart_locally = can_restart_locally
        self.state = task.status.state
        self.health = Health.NONE
        self.local_restarts = 0
        # Times of recent local restarts, for max_attempts within the window.
        self._restart_times: list[float] = []
        self._running_message = "running"
        self._stopping = False
        # Set by stop(): cuts a restart delay short.
        self._stop_requested = asyncio.Event()
        self._unhealthy = ""
        self._runner: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._killer: asyncio.Task[None] | None = None
        # How and when the task last ended, for a late local restart.
        self._ended: tuple[Ending, float] | None = None

    @property
    def done(self) -> bool:
        return self.state.is_terminal

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"task-{self.task.id}")

    def attach(self) -> None:
        """Follow a container found after an agent restart (running, or exited since)."""
        self.state = TaskState.RUNNING
        self._runner = asyncio.create_task(self._reattach(), name=f"task-{self.task.id}")

    def recover_lost(self) -> None:
        """The container vanished while the agent was down: restart the task in
        place if its restart policy allows, else report it failed."""
        self.state = TaskState.RUNNING
        lost = Ending(
            TaskState.FAILED, "container lost", err="container lost while the worker was down"
        )
        self._runner = asyncio.create_task(self._recover(lost), name=f"task-{self.task.id}")

    def _set(
        self, state: TaskState, message: str, err: str = "", exit_code: int | None = None
    ) -> None:
        self.state = state
        status = TaskStatus(
            state=state,
            message=message,
            err=err,
            exit_code=exit_code,
            container_id=self.task.id,
            timestamp=time.time(),
            health=self.health,
        )
        self._report(self.task.id, status)

    async def _run(self) -> None:
        try:
            self._set(TaskState.PREPARING, "pulling image")
            await self.runtime.pull(self.task.spec.container.image)
            if self._stopping:
                self._set(TaskState.SHUTDOWN, "stopped before start")
                return
            self._set(TaskState.STARTING, "starting container")
            await self._create_and_start()
        except ImageNotFound as exc:
            self._set(TaskState.REJECTED, "image not found", err=str(exc))
            return
        except WarrenError as exc:
            self._set(TaskState.REJECTED, "could not start", err=str(exc))
            await self._remove()
            return
        await self._supervise()

    async def _create_and_start(self) -> None:
        config = container_config(self.task)
        networking = self._networking
        if networking is not None:
            config = replace(config, names=await networking.prepare(self.task))
        await self.runtime.create(config)
        if networking is not None:
            # Between create and start: the namespace exists, nothing runs in it yet.
            netns = self.runtime.network_namespace(self.task.id)
            if netns is None:
                raise FailedPrecondition(
                    f"runtime {self.runtime.name} gave task {self.task.id} no network "
                    "namespace to attach to its networks"
                )
            await networking.attach(self.task, netns)
        await self.runtime.start(self.task.id)

    async def _reattach(self) -> None:
        try:
            await self.runtime.reattach(self.task.id)
        except WarrenError as exc:
            log.warning("could not re-attach to %s: %s", self.task.id, exc)
        await self._supervise()

    async def _recover(self, lost: Ending) -> None:
        # No manager has been heard since the agent started: the same rule as
        # for an exit while disconnected applies.
        ending = self._ending(None) if self._stopping else lost
        if await self._restart_or_end(ending):
            await self._supervise()

    async def _supervise(self) -> None:
        """Follow the container until the task ends, restarting it in place while allowed."""
        while True:
            self._watch_health()
            if not await self._restart_or_end(await self._wait_for_exit()):
                return

    def _watch_health(self) -> None:
        check = self.task.spec.container.health
        if check is None:
            if self.state != TaskState.RUNNING or self.local_restarts:
                self._set(TaskState.RUNNING, self._running_message)
            return
        self.health = Health.STARTING
        if self.state != TaskState.RUNNING:
            self._set(TaskState.STARTING, "waiting for a healthy check")
        monitor = HealthMonitor(check, self.runtime, self.task.id, self._on_health)
        self._monitor = asyncio.create_task(monitor.run(), name=f"health-{self.task.id}")

    def _on_health(self, health: Health, message: str) -> None:
        if self.done or self._stopping:
            return
        self.health = health
        if health == Health.HEALTHY:
            self._set(TaskState.RUNNING, self._running_message)
        elif health == Health.UNHEALTHY:
            # Failed for good: kill it, and report it failed once it has exited.
            self._unhealthy = message or "health check failed"
            self._killer = asyncio.create_task(self._stop_container())

    async def _stop_container(self) -> None:
        with contextlib.suppress(NotFound):
            await self.runtime.stop(self.task.id, self.task.spec.container.stop_grace_period)

    async def _wait_for_exit(self) -> Ending:
        try:
            exit_status = await self.runtime.wait(self.task.id)
        except NotFound:
            exit_status = None
        if self._monitor is not None:
            self._monitor.cancel()
        return self._ending(exit_status)

    def _ending(self, exit_status: ExitStatus | None) -> Ending:
        code = None if exit_status is None else exit_status.exit_code
        if self._stopping:
            return Ending(TaskState.SHUTDOWN, "shut down", exit_code=code)
        if self._unhealthy:
            err = f"unhealthy: {self._unhealthy}"
            return Ending(TaskState.FAILED, "health check failed", err=err, exit_code=code)
        if exit_status is None:
            return Ending(TaskState.FAILED, "container lost", err="the container disappeared")
        if exit_status.oom_killed:
            return Ending(
                TaskState.FAILED, "out of memory", err="killed: out of memory", exit_code=code
            )
        if code == 0:
            return Ending(TaskState.COMPLETE, "finished", exit_code=0)
        return Ending(
            TaskState.FAILED, "exited", err=f"task exited with code {code}", exit_code=code
        )

    async def _restart_or_end(self, ending: Ending) -> bool:
        """Restart the task in place (True: it runs again) or report how it ended.

        Decided once, now: if the link comes back during the restart delay the
        restart still happens, and the manager still sees a running task.
        """
        restart = self._may_restart(ending)
        if not restart:
            self._set(ending.state, ending.message, err=ending.err, exit_code=ending.exit_code)
            self._ended = (ending, time.monotonic())
        await self._remove()
        return restart and await self._restart(ending)

    def revive_if_recent(self, within: float) -> bool:
        """The link died just after this task ended: its end may never have
        reached a manager, so nobody would replace it. Restart it in place if
        it ended less than ``within`` seconds ago and its policy allows."""
        if self._ended is None or self._stopping or not self.done:
            return False
        ending, at = self._ended
        if time.monotonic() - at > within or not self._may_restart(ending):
            return False
        self._ended = None
        self._runner = asyncio.create_task(self._revive(ending), name=f"task-{self.task.id}")
        return True

    async def _revive(self, ending: Ending) -> None:
        if await self._restart(ending):
            await self._supervise()

    def _may_restart(self, ending: Ending) -> bool:
        if self._stopping or not self._can_restart_locally():
            return False
        policy = self.task.spec.restart
        now = time.monotonic()
        if policy.window:
            self._restart_times = [t for t in self._restart_times if now - t < policy.window]
        return may_restart_locally(policy, ending, self._restart_times, now)

    async def _restart(self, ending: Ending) -> bool:
        """Delay, then a new container for the same task; False if it ended instead."""
        self.local_restarts += 1
        if self.task.spec.restart.max_attempts:
            self._restart_times.append(time.monotonic())
        delay = self.task.spec.restart.delay
        # Still RUNNING: a terminal report would make the manager replace the task.
        why = ending.err or ending.message
        self._set(TaskState.RUNNING, f"{why}; restarting locally in {delay:g}s")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop_requested.wait()
        if self._stopping:
            self._set(TaskState.SHUTDOWN, "shut down")
            return False
        try:
            await self.runtime.pull(self.task.spec.container.image)
            await self._create_and_start()
        except WarrenError as exc:
            await self._remove()
            if self._stopping:  # stop() raced the new container and spoilt its start
                self._set(TaskState.SHUTDOWN, "shut down")
            else:
                self._set(TaskState.REJECTED, "could not restart", err=str(exc))
            return False
        self.health, self._unhealthy = Health.NONE, ""
        self._running_message = f"restarted locally while disconnected ({self.local_restarts})"
        if self._stopping:
            # stop() came while the container was being created: it found nothing.
            await self._stop_container()
        return True

    async def stop(self) -> None:
        if self.done or self._stopping:
            return
        self._stopping = True
        self._stop_requested.set()
        if self.state in (TaskState.ASSIGNED, TaskState.NEW, TaskState.PENDING):
            if self._runner is not None:
                self._runner.cancel()
            self._set(TaskState.SHUTDOWN, "shut down before start")
            return
        with contextlib.suppress(NotFound):
            await self.runtime.stop(self.task.id, self.task.spec.container.stop_grace_period)

    async def _remove(self) -> None:
        try:
            await self.runtime.remove(self.task.id)
        except WarrenError as exc:
            log.warning("could not remove container %s: %s", self.task.id, exc)
        if self._networking is not None:
            try:
                await self._networking.detach(self.task.id)
            except WarrenError as exc:
                log.warning("could not detach task %s from its networks: %s", self.task.id, exc)

    async def close(self) -> None:
        """Stop following (agent shutdown); the container itself keeps running."""
        for task in (self._monitor, self._runner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
