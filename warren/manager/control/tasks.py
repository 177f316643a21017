"""Tasks: read only (the orchestrator and the scheduler write them)."""

from __future__ import annotations

import builtins

from warren.core.models import Task
from warren.manager.control.nodes import NodeControl
from warren.manager.control.resolve import resolve
from warren.manager.control.services import ServiceControl
from warren.manager.store import Kind, Store


class TaskControl:
    def __init__(self, store: Store, services: ServiceControl, nodes: NodeControl) -> None:
        self.store = store
        self.services = services
        self.nodes = nodes

    def list(self, service: str = "", node: str = "") -> builtins.list[Task]:
        if service:
            tasks = self.store.tasks_of_service(self.services.get(service).id)
        elif node:
            tasks = self.store.tasks_on_node(self.nodes.get(node).id)
        else:
            tasks = self.store.list(Kind.TASK)
        if service and node:
            node_id = self.nodes.get(node).id
            tasks = [t for t in tasks if t.node_id == node_id]
        return sorted(tasks, key=lambda t: (t.service_name, t.slot, t.node_id, -t.created_at))

    def get(self, ref: str) -> Task:
        tasks: dict[str, Task] = {t.id: t for t in self.store.list(Kind.TASK)}
        return resolve(ref, tasks, {}, "task")
