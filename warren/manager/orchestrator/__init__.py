"""The orchestrator: keeps each service's tasks converged on its spec. Pure:
the controller loop (``warren.manager.controllers``) reads a snapshot, calls
``converge`` and writes the operations it returns, and re-runs on change (or at
``Converge.wake_at``).

One module per concern:
- ``slots``: slots (a replica number, or a node for a global service), plans;
- ``replicated`` and ``global_``: which slots a service wants, and when a slot
  may start a task;
- ``restart``: dead tasks under the restart policy (``warren.core.restart``
  decides), history pruning;
- ``update``: rolling updates;
- ``reconcile``: one service's plan, slot by slot;
- ``operations``: plans as store writes.
"""

from warren.manager.orchestrator.operations import Converge, converge, plan_ops
from warren.manager.orchestrator.reconcile import reconcile, reconcile_removed_service
from warren.manager.orchestrator.restart import HISTORY_LIMIT, restart_at
from warren.manager.orchestrator.slots import NewTask, Plan

__all__ = [
    "HISTORY_LIMIT",
    "Converge",
    "NewTask",
    "Plan",
    "converge",
    "plan_ops",
    "reconcile",
    "reconcile_removed_service",
    "restart_at",
]
