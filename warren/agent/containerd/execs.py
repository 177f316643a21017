"""Running a command in a container (health checks): Tasks.Exec and its exit."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from pathlib import Path
from typing import Any

from warren.agent.containerd.exits import Waiters
from warren.agent.containerd.output import ExecOutput
from warren.agent.containerd.tasks import Tasks
from warren.agent.runtime import ExecResult, ExitStatus
from warren.core.errors import RuntimeFailure, WarrenError

# How long a SIGKILLed exec may take to be reported before exec() gives up on it.
_KILL_WAIT = 5.0


async def run_exec(
    tasks: Tasks,
    waiters: Waiters,
    directory: Path,
    container_id: str,
    process: dict[str, Any],
    timeout: float,
) -> ExecResult:
    """Run ``process`` (an OCI process spec) in the container; the event stream
    feeding ``waiters`` must be live. Output: stdout and stderr, first 4 KiB."""
    exec_id = f"exec-{secrets.token_hex(8)}"
    output = ExecOutput(directory / f"{exec_id}.fifo")
    future = waiters.expect(container_id, exec_id)
    try:
        output.open()
        try:
            await tasks.exec(container_id, exec_id, process, str(output.path))
            await tasks.start(container_id, exec_id)
        except WarrenError as exc:
            raise RuntimeFailure(f"exec in {container_id} failed: {exc}") from None
        status = await _exit(tasks, container_id, exec_id, future, timeout)
    finally:
        waiters.discard(container_id, exec_id, future)
        await tasks.delete_process(container_id, exec_id)
        data = output.close()
    return ExecResult(status.exit_code, data)


async def _exit(
    tasks: Tasks,
    container_id: str,
    exec_id: str,
    future: asyncio.Future[ExitStatus],
    timeout: float,
) -> ExitStatus:
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(future)
    except TimeoutError:
        await tasks.kill(container_id, signal.SIGKILL, exec_id=exec_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_KILL_WAIT):
                await future
        raise TimeoutError(
            f"exec in {container_id} ran longer than {timeout:g}s and was killed"
        ) from None
