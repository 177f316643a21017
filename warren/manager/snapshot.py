"""A read-only, point-in-time view of the store, for pure decision functions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from warren.core.models import Node, Service, Task
from warren.core.networks import Network


@dataclass(frozen=True)
class Snapshot:
    revision: int = 0
    nodes: Mapping[str, Node] = field(default_factory=dict)
    services: Mapping[str, Service] = field(default_factory=dict)
    tasks: Mapping[str, Task] = field(default_factory=dict)
    networks: Mapping[str, Network] = field(default_factory=dict)
    # Indexes: task IDs by service ID and by node ID.
    task_ids_by_service: Mapping[str, frozenset[str]] = field(default_factory=dict)
    task_ids_by_node: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        nodes: Mapping[str, Node] | None = None,
        services: Mapping[str, Service] | None = None,
        tasks: Mapping[str, Task] | None = None,
        revision: int = 0,
        networks: Mapping[str, Network] | None = None,
    ) -> Snapshot:
        """Build a snapshot (and its indexes) from plain objects; used by tests too."""
        tasks = dict(tasks or {})
        by_service: dict[str, set[str]] = {}
        by_node: dict[str, set[str]] = {}
        for task in tasks.values():
            by_service.setdefault(task.service_id, set()).add(task.id)
            if task.node_id:
                by_node.setdefault(task.node_id, set()).add(task.id)
        return cls(
            revision=revision,
            nodes=dict(nodes or {}),
            services=dict(services or {}),
            tasks=tasks,
            networks=dict(networks or {}),
            task_ids_by_service={k: frozenset(v) for k, v in by_service.items()},
            task_ids_by_node={k: frozenset(v) for k, v in by_node.items()},
        )

    def tasks_of_service(self, service_id: str) -> list[Task]:
        return [self.tasks[t] for t in self.task_ids_by_service.get(service_id, ())]

    def tasks_on_node(self, node_id: str) -> list[Task]:
        return [self.tasks[t] for t in self.task_ids_by_node.get(node_id, ())]
