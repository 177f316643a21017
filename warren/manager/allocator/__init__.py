"""Address allocation (IPAM): network subnets, node blocks, task addresses,
service VIPs and published ports.

Pure functions, no I/O: each reads an ``AllocatorState`` (the networks, and
what services and tasks hold, mapped from the store) and returns a complete
decision to write in one Raft entry with the object it is for. Run only on the
leader (a controller, or the scheduler as it places a task), so two decisions
never race; a caller making several in one pass folds each into the state
(``AllocatorState.with_task`` and the like) before the next, or gives a batch of
tasks to ``allocate_tasks``.
"""

from __future__ import annotations

from warren.manager.allocator.addresses import (
    TaskRequest,
    allocate_task,
    allocate_tasks,
    allocate_vips,
)
from warren.manager.allocator.nodes import NodeBlocks, blocks_for_nodes
from warren.manager.allocator.ports import allocate_ports
from warren.manager.allocator.services import allocate_service
from warren.manager.allocator.state import (
    AllocatorState,
    ServiceHolding,
    ServiceRequest,
    TaskAllocation,
    TaskHolding,
)
from warren.manager.allocator.subnets import (
    DEFAULT_NETWORK_PREFIX,
    DEFAULT_POOL,
    allocate_network,
    check_network_removable,
    release_node,
)

__all__ = [
    "DEFAULT_NETWORK_PREFIX",
    "DEFAULT_POOL",
    "AllocatorState",
    "NodeBlocks",
    "ServiceHolding",
    "ServiceRequest",
    "TaskAllocation",
    "TaskHolding",
    "TaskRequest",
    "allocate_network",
    "allocate_ports",
    "allocate_service",
    "allocate_task",
    "allocate_tasks",
    "allocate_vips",
    "blocks_for_nodes",
    "check_network_removable",
    "release_node",
]
