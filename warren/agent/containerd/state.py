"""Warren's per-container files: host files, FIFOs, the log and the recorded exit.

containerd forgets a task's exit status once the task is deleted, and Warren
deletes it as soon as it exits (that is when the shim has flushed all the
output), so the status is kept here until the container is removed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from warren.agent.runtime import ExitStatus

EXIT_FILE = "exit.json"
# A started container without a task and without a recorded exit was lost
# (containerd or the host restarted under it).
STARTED_FILE = "started"


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def container(self, container_id: str) -> Path:
        return self.root / "containers" / container_id

    def save_exit(self, container_id: str, status: ExitStatus) -> None:
        directory = self.container(container_id)
        directory.mkdir(parents=True, exist_ok=True)
        record = {
            "exit_code": status.exit_code,
            "oom_killed": status.oom_killed,
            "finished_at": status.finished_at,
        }
        # Write-then-rename: a crash leaves the old record or the new, never half.
        temporary = directory / f".{EXIT_FILE}.tmp"
        temporary.write_text(json.dumps(record))
        os.replace(temporary, directory / EXIT_FILE)

    def load_exit(self, container_id: str) -> ExitStatus | None:
        try:
            record = json.loads((self.container(container_id) / EXIT_FILE).read_text())
            return ExitStatus(
                int(record["exit_code"]),
                bool(record["oom_killed"]),
                float(record["finished_at"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def mark_started(self, container_id: str) -> None:
        (self.container(container_id) / STARTED_FILE).touch()

    def was_started(self, container_id: str) -> bool:
        return (self.container(container_id) / STARTED_FILE).exists()

    def remove(self, container_id: str) -> None:
        shutil.rmtree(self.container(container_id), ignore_errors=True)
