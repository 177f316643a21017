"""runc's record of a container under Warren's runc root, when containerd forgot it.

containerd removes a task's runc state when it deletes the task, also for a
shim it finds dead after it restarts with its state kept. But Warren's runc
root lives in the node's data dir: when containerd's state went (a wiped
instance, /run cleared by a reboot) and its containers died with it, runc's
record outlives them, and creating a task with the same ID again fails with
"container with given ID already exists". Only runc can tell whether such a
record's process still lives (pid and start time), so it is asked: a dead one
is deleted, a live one is left alone and refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from warren.core.errors import FailedPrecondition, RuntimeFailure

log = logging.getLogger(__name__)

RUNC = "runc"
STATE_FILE = "state.json"
# runc's status of a container whose init process is gone.
STOPPED = "stopped"


class RuncState:
    """The records of one containerd namespace under ``root`` (the shim adds the namespace)."""

    def __init__(self, root: Path, namespace: str, binary: str = RUNC) -> None:
        self.root = root / namespace
        self._binary = binary

    def has_record(self, container_id: str) -> bool:
        return (self.root / container_id / STATE_FILE).exists()

    async def remove_dead(self, container_id: str) -> None:
        """Delete runc's record of ``container_id`` if its process is dead.

        Call it only for an ID containerd has no task for. Raises
        ``FailedPrecondition`` if the process still runs (an orphan no shim
        follows: it is not ours to kill), ``RuntimeFailure`` if runc fails.
        """
        if not self.has_record(container_id):
            return
        status, pid = await self._status(container_id)
        if status != STOPPED:
            raise FailedPrecondition(
                f"container {container_id} still has a live process under runc (pid {pid}, "
                f"{status}) but no containerd task; stop it with "
                f"'runc --root {self.root} kill {container_id} KILL'"
            )
        # Without --force: runc itself refuses a container that is not stopped.
        await self._runc("delete", container_id)
        log.info("deleted runc's leftover record of dead container %s", container_id)

    async def _status(self, container_id: str) -> tuple[str, int]:
        output = await self._runc("state", container_id)
        try:
            state = json.loads(output)
            return str(state["status"]), int(state.get("pid") or 0)
        except (ValueError, KeyError, TypeError):
            raise RuntimeFailure(
                f"runc state {container_id}: unreadable answer {output[:200]!r}"
            ) from None

    async def _runc(self, *args: str) -> str:
        argv = [self._binary, "--root", str(self.root), *args]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot run {self._binary}: {exc}") from None
        stdout, stderr = await process.communicate()
        if process.returncode != 0:
            message = " ".join(stderr.decode(errors="replace").split())
            raise RuntimeFailure(f"runc {' '.join(args)}: {message}")
        return stdout.decode(errors="replace")
