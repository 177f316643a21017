"""The cluster object: one, holding the join-token secrets (never watched by
clients; a backup holds it as its own field, not as a table)."""

from __future__ import annotations

from typing import Any

from warren.core.errors import AlreadyExists
from warren.core.models import Cluster
from warren.manager.kinds.base import Kind, KindSpec, StoreView, register


def _only_one(view: StoreView, old: Any, new: Any) -> None:
    if old is None and view.count(Kind.CLUSTER):
        raise AlreadyExists("the cluster is already initialised")


register(KindSpec(Kind.CLUSTER, Cluster, invariants=(_only_one,), public_events=False))
