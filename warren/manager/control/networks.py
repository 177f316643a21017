"""Networks: create (the leader's allocator picks or checks the subnet), read,
remove (refused while a service or a task uses it, and for the default network)."""

from __future__ import annotations

import builtins
import time
from typing import cast

from warren.core.errors import FailedPrecondition, NotFound
from warren.core.models import new_id
from warren.core.networks import Network, NetworkSpec
from warren.manager.allocator import allocate_network, check_network_removable
from warren.manager.allocator.state import AllocatorState
from warren.manager.allocator.view import allocator_state
from warren.manager.command_format import cluster_format
from warren.manager.consensus import Consensus
from warren.manager.control.resolve import DESTRUCTIVE_MIN_PREFIX, resolve
from warren.manager.store import MUST_NOT_EXIST, Kind, Store, delete, put
from warren.manager.writes import write

# The network services join when they name none (created by `cluster init`).
DEFAULT_NETWORK = "default"
# The command format that brought networks: an older manager cannot apply them.
NETWORKS_FORMAT = 2


def current_allocation(store: Store) -> AllocatorState:
    return allocator_state(
        store.list(Kind.NETWORK), store.list(Kind.SERVICE), store.list(Kind.TASK)
    )


class NetworkControl:
    def __init__(self, consensus: Consensus) -> None:
        self.consensus = consensus
        self.store = consensus.store

    async def create(self, spec: NetworkSpec) -> Network:
        network = allocate_network(current_allocation(self.store), new_id(), spec, time.time())
        # Another create from the same state lands first? The network kind's
        # invariants refuse the overlap or the name when this one is applied.
        await write(self.consensus, [put(network, MUST_NOT_EXIST)])
        return cast(Network, self.store.get(Kind.NETWORK, network.id))

    def get(self, ref: str, min_prefix: int = 1) -> Network:
        networks: builtins.list[Network] = self.store.list(Kind.NETWORK)
        by_name = {n.spec.name: n for n in networks}
        return resolve(ref, {n.id: n for n in networks}, by_name, "network", min_prefix)

    def list(self) -> builtins.list[Network]:
        return sorted(self.store.list(Kind.NETWORK), key=lambda n: n.spec.name)

    async def ensure_default(self) -> Network | None:
        """Create the default network when the cluster has none (one made before
        networks existed: ``cluster init`` creates it, and it cannot be removed).
        Returns it when made."""
        if cluster_format(self.store) < NETWORKS_FORMAT or self.default_ids():
            return None
        return await self.create(NetworkSpec(DEFAULT_NETWORK))

    async def remove(self, ref: str) -> None:
        network = self.get(ref, DESTRUCTIVE_MIN_PREFIX)
        if network.spec.name == DEFAULT_NETWORK:
            raise FailedPrecondition(
                "the default network cannot be removed: services that name no network join "
                "it (give a service --network NAME to keep it off the default network)"
            )
        check_network_removable(current_allocation(self.store), network.id)
        await write(self.consensus, [delete(Kind.NETWORK, network.id, network.version)])

    def resolve_ids(self, refs: tuple[str, ...]) -> tuple[str, ...]:
        """Network IDs for what a spec names (IDs, names or ID prefixes)."""
        return tuple(self.get(ref).id for ref in refs)

    def default_ids(self) -> tuple[str, ...]:
        """The default network's ID, or none when it was removed."""
        try:
            return (self.get(DEFAULT_NETWORK).id,)
        except NotFound:
            return ()
