"""containerd's task service: the running side of a container and its execs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import any_pb2

from warren.agent.containerd.client import ContainerdClient
from warren.agent.containerd.proto import task_pb2, tasks_pb2, types_pb2
from warren.agent.containerd.spec import PROCESS_TYPE_URL
from warren.core.errors import NotFound


class Tasks:
    def __init__(self, client: ContainerdClient) -> None:
        self._client = client

    async def get(self, container_id: str, exec_id: str = "") -> task_pb2.Process | None:
        """The process (``task.Process``), or None if there is no such task or exec."""
        request = tasks_pb2.GetRequest(container_id=container_id, exec_id=exec_id)
        try:
            return (await self._client.call(self._client.api.tasks.Get, request)).process
        except NotFound:
            return None

    async def list(self) -> dict[str, task_pb2.Process]:
        response = await self._client.call(
            self._client.api.tasks.List, tasks_pb2.ListTasksRequest()
        )
        # containerd fills in ``id`` (the container's, for a task), not ``container_id``.
        return {process.id: process for process in response.tasks}

    async def create(
        self, container_id: str, rootfs: Sequence[types_pb2.Mount], stdout: str, stderr: str
    ) -> None:
        request = tasks_pb2.CreateTaskRequest(
            container_id=container_id, rootfs=rootfs, stdout=stdout, stderr=stderr
        )
        await self._client.call(self._client.api.tasks.Create, request)

    async def start(self, container_id: str, exec_id: str = "") -> int:
        request = tasks_pb2.StartRequest(container_id=container_id, exec_id=exec_id)
        return int((await self._client.call(self._client.api.tasks.Start, request)).pid)

    async def kill(
        self, container_id: str, signal: int, exec_id: str = "", all_processes: bool = False
    ) -> None:
        """Signal the process; one that has already exited is not an error."""
        request = tasks_pb2.KillRequest(
            container_id=container_id, exec_id=exec_id, signal=signal, all=all_processes
        )
        with contextlib.suppress(NotFound):
            await self._client.call(self._client.api.tasks.Kill, request)

    async def delete(self, container_id: str) -> None:
        """Delete the task; this waits until the shim has copied all its output."""
        request = tasks_pb2.DeleteTaskRequest(container_id=container_id)
        with contextlib.suppress(NotFound):
            await self._client.call(self._client.api.tasks.Delete, request)

    async def exec(
        self, container_id: str, exec_id: str, process: dict[str, Any], output: str
    ) -> None:
        spec = any_pb2.Any(type_url=PROCESS_TYPE_URL, value=json.dumps(process).encode())
        request = tasks_pb2.ExecProcessRequest(
            container_id=container_id, exec_id=exec_id, spec=spec, stdout=output, stderr=output
        )
        await self._client.call(self._client.api.tasks.Exec, request)

    async def delete_process(self, container_id: str, exec_id: str) -> None:
        request = tasks_pb2.DeleteProcessRequest(container_id=container_id, exec_id=exec_id)
        with contextlib.suppress(NotFound):
            await self._client.call(self._client.api.tasks.DeleteProcess, request)
