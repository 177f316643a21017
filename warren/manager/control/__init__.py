"""The service layer behind both the gRPC and the REST API, one module per resource.

Reads come from the local store; writes are commands through consensus,
whose preconditions the state machine checks again when it applies them.

``ControlService`` composes the per-resource services and gives the two
adapters (and the node that runs them) one object with one flat set of
operations: an adapter handler stays one call, and a new resource is a module
here plus its names below.
"""

from __future__ import annotations

from warren.manager.consensus import Consensus
from warren.manager.control.cluster import ClusterControl
from warren.manager.control.joins import JoinControl
from warren.manager.control.membership import Membership
from warren.manager.control.networks import NetworkControl
from warren.manager.control.nodes import NodeControl
from warren.manager.control.resolve import DESTRUCTIVE_MIN_PREFIX
from warren.manager.control.services import ServiceControl
from warren.manager.control.tasks import TaskControl
from warren.manager.images import ImageResolver
from warren.security.ca import CertificateAuthority

__all__ = [
    "DESTRUCTIVE_MIN_PREFIX",
    "ClusterControl",
    "ControlService",
    "JoinControl",
    "Membership",
    "NetworkControl",
    "NodeControl",
    "ServiceControl",
    "TaskControl",
]


class ControlService:
    def __init__(
        self,
        consensus: Consensus,
        ca: CertificateAuthority,
        images: ImageResolver | None = None,
    ) -> None:
        self.consensus = consensus
        self.store = consensus.store
        self.ca = ca
        self.membership = Membership(consensus)
        self.networks = NetworkControl(consensus)
        self.services = ServiceControl(consensus, self.networks, images)
        self.nodes = NodeControl(consensus, self.membership)
        self.tasks = TaskControl(self.store, self.services, self.nodes)
        self.cluster_control = ClusterControl(consensus, ca)
        self.joins = JoinControl(consensus, ca, self.cluster_control, self.membership)

        # The flat operations, each one a per-resource service's method.
        self.create_service = self.services.create
        self.get_service = self.services.get
        self.list_services = self.services.list
        self.update_service = self.services.update
        self.scale_service = self.services.scale
        self.delete_service = self.services.delete

        self.get_node = self.nodes.get
        self.describe_node = self.nodes.describe
        self.list_nodes = self.nodes.list
        self.update_node = self.nodes.update
        self.remove_node = self.nodes.remove
        self.promote_node = self.nodes.promote
        self.demote_node = self.nodes.demote

        self.create_network = self.networks.create
        self.get_network = self.networks.get
        self.list_networks = self.networks.list
        self.remove_network = self.networks.remove

        self.list_tasks = self.tasks.list
        self.get_task = self.tasks.get

        self.cluster = self.cluster_control.get
        self.cluster_info = self.cluster_control.info
        self.manager_addresses = self.cluster_control.manager_addresses
        self.check_manager_caller = self.cluster_control.check_manager_caller
        self.read_barrier = self.cluster_control.read_barrier
        self.join_token = self.cluster_control.join_token
        self.rotate_join_token = self.cluster_control.rotate_join_token
        self.seal_legacy_join_tokens = self.cluster_control.seal_legacy_join_tokens

        self.join = self.joins.join
        self.accept_promotion = self.joins.accept_promotion
        self.raft_peers = self.membership.raft_peers
