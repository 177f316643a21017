"""One task's life on a node: pull, create, start, wait, stop, report.

Every state change is reported through a callback as it happens; the agent
forwards the reports to the manager (and its cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from warren.agent.runtime import ContainerConfig, ExitStatus, Runtime
from warren.core.errors import ImageNotFound, NotFound, WarrenError
from warren.core.models import Task, TaskStatus
from warren.core.states import TaskState

log = logging.getLogger(__name__)

Reporter = Callable[[str, TaskStatus], None]

DEFAULT_GRACE_PERIOD = 10.0


def container_config(task: Task) -> ContainerConfig:
    spec = task.spec
    return ContainerConfig(
        container_id=task.id,
        image=spec.image,
        args=spec.args,
        env=dict(spec.env),
        labels={
            "warren.task.id": task.id,
            "warren.service.id": task.service_id,
            "warren.service.name": task.service_name,
            "warren.node.id": task.node_id,
        },
        cpu_limit=spec.limits.cpus,
        memory_limit_bytes=spec.limits.memory_bytes,
    )


class TaskExecutor:
    def __init__(self, task: Task, runtime: Runtime, report: Reporter) -> None:
        self.task = task
        self.runtime = runtime
        self._report = report
        self.state = task.status.state
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.state.is_terminal

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"task-{self.task.id}")

    def attach(self) -> None:
        """Follow a container that is already running (after an agent restart)."""
        self.state = TaskState.RUNNING
        self._runner = asyncio.create_task(self._follow(), name=f"task-{self.task.id}")

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
            self._set(TaskState.RUNNING, "running")
        except ImageNotFound as exc:
            self._set(TaskState.REJECTED, "image not found", err=str(exc))
            return
        except WarrenError as exc:
            self._set(TaskState.REJECTED, "could not start", err=str(exc))
            await self._remove()
            return
        await self._follow()

    async def _follow(self) -> None:
        try:
            exit_status = await self.runtime.wait(self.task.id)
        except NotFound:
            exit_status = None
        self._finish(exit_status)
        await self._remove()

    def _finish(self, exit_status: ExitStatus | None) -> None:
        if self._stopping:
            code = exit_status.exit_code if exit_status else None
            self._set(TaskState.SHUTDOWN, "shut down", exit_code=code)
        elif exit_status is None:
            self._set(TaskState.FAILED, "container lost", err="the container disappeared")
        elif exit_status.oom_killed:
            self._set(
                TaskState.FAILED,
                "out of memory",
                err="killed: out of memory",
                exit_code=exit_status.exit_code,
            )
        elif exit_status.exit_code == 0:
            self._set(TaskState.COMPLETE, "finished", exit_code=0)
        else:
            err = f"task exited with code {exit_status.exit_code}"
            self._set(TaskState.FAILED, "exited", err=err, exit_code=exit_status.exit_code)

    async def stop(self, grace_period: float = DEFAULT_GRACE_PERIOD) -> None:
        if self.done or self._stopping:
            return
        self._stopping = True
        if self.state in (TaskState.ASSIGNED, TaskState.NEW, TaskState.PENDING):
            if self._runner is not None:
                self._runner.cancel()
            self._set(TaskState.SHUTDOWN, "shut down before start")
            return
        with contextlib.suppress(NotFound):
            await self.runtime.stop(self.task.id, grace_period)

    async def _remove(self) -> None:
        try:
            await self.runtime.remove(self.task.id)
        except WarrenError as exc:
            log.warning("could not remove container %s: %s", self.task.id, exc)

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
