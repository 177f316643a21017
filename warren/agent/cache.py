"""The worker's local cache: its assignments and their last known statuses.

Written atomically on every change, so a worker that restarts (or loses its
managers) knows what it was running.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from warren.core.codec import from_dict, to_dict
from warren.core.errors import InvalidArgument
from warren.core.models import Task


class TaskCache:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Task]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"unreadable task cache {self.path}: {exc}") from None
        return {task_id: from_dict(Task, data) for task_id, data in raw.get("tasks", {}).items()}

    def save(self, tasks: dict[str, Task]) -> None:
        payload: dict[str, Any] = {"tasks": {tid: to_dict(t) for tid, t in tasks.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
