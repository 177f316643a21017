"""The store's kinds (see ``base``); importing this registers the built-in ones.

A new kind is one module here, imported below, plus its tests.
"""

from warren.manager.kinds import cluster, network, node, service, task
from warren.manager.kinds.base import (
    BackupRule,
    Index,
    Invariant,
    Kind,
    KindSpec,
    StoreView,
    kind_of,
    kind_of_table,
    public_kinds,
    register,
    spec_of,
    unregister,
)

__all__ = [
    "BackupRule",
    "Index",
    "Invariant",
    "Kind",
    "KindSpec",
    "StoreView",
    "cluster",
    "kind_of",
    "kind_of_table",
    "network",
    "node",
    "public_kinds",
    "register",
    "service",
    "spec_of",
    "task",
    "unregister",
]
