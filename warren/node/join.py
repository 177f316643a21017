"""The join client: a worker or a manager joining with a token, and a promoted
node trading its certificate for a manager one.

A joiner fetches the manager's certificate chain without trusting it, checks
the CA's fingerprint against the token, then sends a CSR and the token's
secret over the one RPC a token opens (``Dispatcher.Join``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc

from warren.core.errors import (
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    WarrenError,
)
from warren.manager.manager import ManagerCredentials
from warren.node.options import ManagerOptions, WorkerOptions
from warren.node.state import NodeState
from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.proto.errors import error_from_rpc
from warren.security.ca import generate_key, key_pem, make_csr
from warren.security.join import joiner_credentials
from warren.security.tls import (
    IdentityFiles,
    check_manager_leaf,
    fetch_ca_chain,
    manager_channel_options,
    pin_ca,
)
from warren.security.tokens import parse

log = logging.getLogger(__name__)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidArgument(f"invalid manager address '{address}': expected HOST:PORT")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class JoinRequest:
    token: str | None
    managers: list[str]
    role: str
    node_name: str
    labels: dict[str, str] = field(default_factory=dict)
    api_address: str = ""
    raft_address: str = ""
    availability: str = ""


async def request_join(join: JoinRequest) -> tuple[pb.JoinResponse, bytes, str]:
    """Verify the manager's CA against the token, then trade a CSR for a
    certificate. Returns the manager's reply, the new private key (PEM) and
    the manager address that answered."""
    if not join.token:
        raise InvalidArgument("this data dir holds no node yet: --token is required to join")
    if not join.managers:
        raise InvalidArgument("--manager is required to join")
    token = parse(join.token)
    last_error: WarrenError = Unavailable("no manager address given")
    for manager in join.managers:
        host, port = split_address(manager)
        try:
            chain = await asyncio.to_thread(fetch_ca_chain, host, port)
            ca_pem = pin_ca(chain, token.ca_fingerprint)
            check_manager_leaf(chain, ca_pem, host)
            reply, key = await _join_with(manager, ca_pem, token.secret, join)
            return reply, key, manager
        except Unavailable as exc:
            last_error = exc
    raise last_error


async def _join_with(
    manager: str, ca_pem: bytes, secret: str, join: JoinRequest
) -> tuple[pb.JoinResponse, bytes]:
    joiner_key, joiner_cert = joiner_credentials(secret, join.role)
    credentials = grpc.ssl_channel_credentials(ca_pem, joiner_key, joiner_cert)
    key = generate_key()
    request = pb.JoinRequest(
        secret=secret,
        role=join.role,
        csr=make_csr(key),
        hostname=join.node_name,
        labels=join.labels,
        api_address=join.api_address,
        raft_address=join.raft_address,
        availability=join.availability,
    )
    # The token goes only to a manager of the pinned CA's cluster.
    options = manager_channel_options(manager, ca_pem)
    async with grpc.aio.secure_channel(manager, credentials, options) as channel:
        try:
            reply = await pb_grpc.DispatcherStub(channel).Join(request, timeout=15)
        except grpc.RpcError as exc:
            raise _join_refusal(error_from_rpc(exc), manager, join.role) from None
    if reply.ca_certificate != ca_pem:
        raise PermissionDenied("the manager answered with another CA than the pinned one")
    log.info("joined the cluster", extra={"node_id": reply.node_id, "manager": manager})
    return reply, key_pem(key)


def _join_refusal(error: WarrenError, manager: str, role: str) -> WarrenError:
    """What a failed Join means. The manager was just reached and its
    certificate checked, so a connection it closes during the handshake
    (gRPC says only "Socket closed") is the manager refusing the join
    certificate derived from this secret and role. A refusal on this side (a
    certificate that does not verify) keeps its own message."""
    if type(error) is not Unavailable or "Socket closed" not in error.message:
        return error
    return Unauthenticated(
        f"invalid or expired join token: the manager at {manager} does not accept it "
        f"for a {role} (rotated, mistyped or for the other role); get a current one "
        f"with 'warren cluster join-token {role}' on a manager"
    )


async def request_promotion(
    identity: IdentityFiles, managers: list[str], api_address: str, raft_address: str
) -> tuple[pb.JoinResponse, bytes]:
    """Trade this node's certificate for a manager one; the cluster must want
    it as a manager (node promote). Returns the reply, as for a joining
    manager, and the new private key (PEM)."""
    ca_pem, cert_pem, node_key = identity.load()
    credentials = grpc.ssl_channel_credentials(ca_pem, node_key, cert_pem)
    key = generate_key()
    request = pb.PromoteRequest(
        csr=make_csr(key), api_address=api_address, raft_address=raft_address
    )
    last_error: WarrenError = Unavailable("no manager address given")
    for manager in managers:
        options = manager_channel_options(manager, ca_pem)
        async with grpc.aio.secure_channel(manager, credentials, options) as channel:
            try:
                reply = await pb_grpc.DispatcherStub(channel).Promote(request, timeout=15)
            except grpc.RpcError as exc:
                last_error = error_from_rpc(exc)
                if isinstance(last_error, Unavailable):
                    continue
                raise last_error from None
        if reply.ca_certificate != ca_pem:
            raise PermissionDenied("the manager answered with another CA than the node's")
        log.info("promoted to a manager", extra={"node_id": reply.node_id, "manager": manager})
        return reply, key_pem(key)
    raise last_error


async def join_cluster(options: WorkerOptions, identity: IdentityFiles) -> NodeState:
    """A worker joins with its token, and keeps its identity and node ID."""
    join = JoinRequest(options.token, options.managers, "worker", options.node_name, options.labels)
    reply, key, manager = await request_join(join)
    identity.save(reply.ca_certificate, reply.certificate, key)
    state = NodeState(reply.node_id, "worker", list(reply.managers) or [manager])
    state.save(options.data_dir)
    return state


def joins_as_manager(options: ManagerOptions) -> bool:
    """Whether a manager with no state of its own joins a cluster (with a token,
    or promoted) rather than creating one."""
    return options.join_token is not None or options.promote


async def join_as_manager(options: ManagerOptions) -> ManagerCredentials:
    """What a manager joining the cluster (``manager join``, or a promoted node)
    receives: its node ID, the CA and its key, its certificate, and the Raft peers."""
    if options.promote:
        identity = IdentityFiles(options.data_dir / "certs")
        reply, key = await request_promotion(
            identity, options.join_managers, options.api_address, options.raft_address
        )
    else:
        join = JoinRequest(
            token=options.join_token,
            managers=options.join_managers,
            role="manager",
            node_name=options.node_name,
            labels=options.labels,
            api_address=options.api_address,
            raft_address=options.raft_address,
            availability=str(options.availability),
        )
        reply, key, _ = await request_join(join)
    return ManagerCredentials(
        node_id=reply.node_id,
        ca_certificate=reply.ca_certificate,
        ca_key=reply.ca_key,
        certificate=reply.certificate,
        key=key,
        raft_peers=list(reply.raft_peers),
    )
