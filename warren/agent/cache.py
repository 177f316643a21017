"""The worker's local cache: its assignments and their last known statuses.

Written atomically on every change, so a worker that restarts (or loses its
managers) knows what it was running.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from warren.core.codec import from_dict, to_dict
from warren.core.errors import InvalidArgument
from warren.core.models import Task
from warren.security.tls import write_private


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

    def encode(self, tasks: dict[str, Task]) -> bytes:
        payload: dict[str, Any] = {"tasks": {tid: to_dict(t) for tid, t in tasks.items()}}
        # json.dumps, not json.dump: only dumps uses the C encoder.
        return json.dumps(payload, separators=(",", ":")).encode()

    def write(self, data: bytes) -> None:
        """Atomic, durable and 0600 (service env values are in it); blocking,
        so callers on the event loop use a thread."""
        write_private(self.path, data)

    def save(self, tasks: dict[str, Task]) -> None:
        self.write(self.encode(tasks))
