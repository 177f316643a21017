"""One task's life on a node: pull, create, start, health, wait, stop, report.

Every state change is reported through a callback as it happens; the agent
forwards the reports to the manager (and its cache). A task with a health
check stays ``starting`` until its first healthy probe; once unhealthy beyond
its retries it is killed and reported ``failed``, and the restart policy
replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from warren.agent.health import HealthMonitor
from warren.agent.runtime import ContainerConfig, ExitStatus, Runtime
from warren.core.errors import ImageNotFound, NotFound, WarrenError
from warren.core.models import Health, NetworkMode, Task, TaskStatus
from warren.core.states import TaskState

log = logging.getLogger(__name__)

Reporter = Callable[[str, TaskStatus], None]


def container_config(task: Task) -> ContainerConfig:
    spec = task.spec
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
        cpu_limit=spec.limits.cpus,
        memory_limit_bytes=spec.limits.memory_bytes,
        read_only=spec.read_only,
        init=spec.init,
        host_network=spec.network_mode == NetworkMode.HOST,
        stop_signal=spec.stop_signal,
    )


class TaskExecutor:
    def __init__(self, task: Task, runtime: Runtime, report: Reporter) -> None:
        self.task = task
        self.runtime = runtime
        self._report = report
        self.state = task.status.state
        self.health = Health.NONE
        self._stopping = False
        self._unhealthy = ""
        self._runner: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._killer: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.state.is_terminal

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"task-{self.task.id}")

    def attach(self) -> None:
        """Follow a container that is already running (after an agent restart)."""
        self.state = TaskState.RUNNING
        self._runner = asyncio.create_task(self._reattach(), name=f"task-{self.task.id}")

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
            await self.runtime.pull(self.task.spec.image)
            if self._stopping:
                self._set(TaskState.SHUTDOWN, "stopped before start")
                return
            self._set(TaskState.STARTING, "starting container")
            await self.runtime.create(container_config(self.task))
            await self.runtime.start(self.task.id)
        except ImageNotFound as exc:
            self._set(TaskState.REJECTED, "image not found", err=str(exc))
            return
        except WarrenError as exc:
            self._set(TaskState.REJECTED, "could not start", err=str(exc))
            await self._remove()
            return
        self._watch_health()
        await self._follow()

    async def _reattach(self) -> None:
        try:
            await self.runtime.reattach(self.task.id)
        except WarrenError as exc:
            log.warning("could not re-attach to %s: %s", self.task.id, exc)
        self._watch_health()
        await self._follow()

    def _watch_health(self) -> None:
        check = self.task.spec.health
        if check is None:
            if self.state != TaskState.RUNNING:
                self._set(TaskState.RUNNING, "running")
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
            self._set(TaskState.RUNNING, "running")
        elif health == Health.UNHEALTHY:
            # Failed for good: kill it, and report it failed once it has exited.
            self._unhealthy = message or "health check failed"
            self._killer = asyncio.create_task(self._kill_unhealthy())

    async def _kill_unhealthy(self) -> None:
        with contextlib.suppress(NotFound):
            await self.runtime.stop(self.task.id, self.task.spec.stop_grace_period)

    async def _follow(self) -> None:
        try:
            exit_status = await self.runtime.wait(self.task.id)
        except NotFound:
            exit_status = None
        if self._monitor is not None:
            self._monitor.cancel()
        self._finish(exit_status)
        await self._remove()

    def _finish(self, exit_status: ExitStatus | None) -> None:
        code = None if exit_status is None else exit_status.exit_code
        if self._stopping:
            self._set(TaskState.SHUTDOWN, "shut down", exit_code=code)
        elif self._unhealthy:
            err = f"unhealthy: {self._unhealthy}"
            self._set(TaskState.FAILED, "health check failed", err=err, exit_code=code)
        elif exit_status is None:
            self._set(TaskState.FAILED, "container lost", err="the container disappeared")
        elif exit_status.oom_killed:
            self._set(
                TaskState.FAILED, "out of memory", err="killed: out of memory", exit_code=code
            )
        elif code == 0:
            self._set(TaskState.COMPLETE, "finished", exit_code=0)
        else:
            self._set(
                TaskState.FAILED, "exited", err=f"task exited with code {code}", exit_code=code
            )

    async def stop(self) -> None:
        if self.done or self._stopping:
            return
        self._stopping = True
        if self.state in (TaskState.ASSIGNED, TaskState.NEW, TaskState.PENDING):
            if self._runner is not None:
                self._runner.cancel()
            self._set(TaskState.SHUTDOWN, "shut down before start")
            return
        with contextlib.suppress(NotFound):
            await self.runtime.stop(self.task.id, self.task.spec.stop_grace_period)

    async def _remove(self) -> None:
        try:
            await self.runtime.remove(self.task.id)
        except WarrenError as exc:
            log.warning("could not remove container %s: %s", self.task.id, exc)

    async def close(self) -> None:
        """Stop following (agent shutdown); the container itself keeps running."""
        for task in (self._monitor, self._runner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
