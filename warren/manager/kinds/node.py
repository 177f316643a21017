"""Nodes. A restored cluster keeps the workers, down until they reconnect; the
old managers are gone (the restoring one is the only manager)."""

from __future__ import annotations

from dataclasses import replace

from warren.core.models import Node, NodeRole, NodeStatus
from warren.manager.kinds.base import BackupRule, Kind, KindSpec, register

RESTORED_MESSAGE = "restored from a backup; waiting for the node to reconnect"


def _restore(node: Node, now: float) -> Node | None:
    if node.role != NodeRole.WORKER:
        return None
    return replace(node, status=NodeStatus.DOWN, status_message=RESTORED_MESSAGE, updated_at=now)


register(KindSpec(Kind.NODE, Node, backup=BackupRule("nodes", _restore)))
