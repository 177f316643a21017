"""A synchronous admin client for the managers' ``Control`` gRPC API.

Every call returns domain models (``warren.core.models``) and raises Warren
errors, never ``grpc.RpcError``. With several managers, the client tries them
in order and sticks with the first that answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import Message

from warren.core.doctor import DEFAULT_TIMEOUT as DEFAULT_DOCTOR_TIMEOUT
from warren.core.doctor import DoctorReport
from warren.core.errors import InvalidArgument, Unavailable, WarrenError
from warren.core.models import Availability, Node, Service, ServiceSpec, Task
from warren.core.networks import Network, NetworkSpec
from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.proto.convert import from_message, to_message
from warren.proto.errors import (
    CONSISTENCY_KEY,
    ERROR_CODE_KEY,
    LINEARIZABLE,
    error_from_rpc,
    leader_hint,
    trailing_metadata,
)
from warren.security.backup_file import Backup, decode_state
from warren.security.tls import IdentityFiles, manager_channel_options

# What gRPC puts before the cause of a failed connection.
_TRANSPORT_PREFIX = re.compile(
    r"^failed to connect to all addresses; last error: [A-Z_]+: (?:(?:ipv4|ipv6|unix):\S+: )?"
)
# Backups can outgrow gRPC's 4 MiB default for replies.
_MAX_REPLY_BYTES = 512 * 1024**2
Request = TypeVar("Request", bound=Message)
Reply = TypeVar("Reply", bound=Message)
if TYPE_CHECKING:  # grpc's sync callables are generic only in its type stubs
    # A Control method picked from a stub, e.g. ``lambda stub: stub.GetService``.
    UnaryMethod = Callable[[pb_grpc.ControlStub], grpc.UnaryUnaryMultiCallable[Request, Reply]]
    StreamMethod = Callable[[pb_grpc.ControlStub], grpc.UnaryStreamMultiCallable[Request, Reply]]


@dataclass(frozen=True)
class LogLine:
    """One line a task's container wrote, as the managers relay it."""

    task_id: str
    task_name: str  # e.g. web.2
    node_id: str
    timestamp: float  # seconds since the epoch
    stream: str  # stdout or stderr
    line: bytes  # without the newline


class WarrenClient:
    def __init__(
        self,
        managers: list[str],
        identity: IdentityFiles,
        timeout: float = 10.0,
        linearizable: bool = False,
    ) -> None:
        if not managers:
            raise InvalidArgument("no manager address given")
        # Reads see every write committed before they started, on any manager.
        self._metadata = ((CONSISTENCY_KEY, LINEARIZABLE),) if linearizable else ()
        ca, cert, key = identity.load()
        self._ca = ca
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        self._managers = list(managers)
        self._timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._preferred = 0

    # -- plumbing --------------------------------------------------------------

    @property
    def manager(self) -> str:
        """The manager that answered last (the first one before any call)."""
        return self._managers[self._preferred]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> WarrenClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _stub(self, address: str) -> pb_grpc.ControlStub:
        if address not in self._channels:
            # Only a manager of this cluster whose certificate names the host dialled.
            options = [
                ("grpc.max_receive_message_length", _MAX_REPLY_BYTES),
                *manager_channel_options(address, self._ca),
            ]
            self._channels[address] = grpc.secure_channel(address, self._credentials, options)
        return pb_grpc.ControlStub(self._channels[address])

    def _candidates(self) -> list[int]:
        """Manager indexes, starting with the one that worked last."""
        count = len(self._managers)
        return [(self._preferred + i) % count for i in range(count)]

    def _call(
        self, method: UnaryMethod[Request, Reply], request: Request, timeout: float | None = None
    ) -> Reply:
        """``timeout``: the call's deadline in seconds (None: the client's)."""
        failures: list[str] = []
        candidates = self._candidates()
        for index in candidates:
            address = self._managers[index]
            try:
                reply = method(self._stub(address))(
                    request, timeout=timeout or self._timeout, metadata=self._metadata
                )
            except grpc.RpcError as exc:
                if not _is_unavailable(exc):
                    raise error_from_rpc(exc) from None
                failures.append(f"{address}: {_reason(exc)}")
                # A follower that only the leader can stand in for names it:
                # try it too, even if it is not in the list.
                hint = leader_hint(exc)
                if hint and hint not in self._managers:
                    self._managers.append(hint)
                    candidates.append(len(self._managers) - 1)
                continue
            self._preferred = index
            return reply
        raise _all_unavailable(failures)

    # -- services --------------------------------------------------------------

    def create_service(self, spec: ServiceSpec) -> Service:
        request = pb.CreateServiceRequest(spec=to_message(spec, pb.ServiceSpec))
        return _service(self._call(lambda stub: stub.CreateService, request))

    def get_service(self, ref: str) -> Service:
        return _service(self._call(lambda stub: stub.GetService, pb.ServiceRef(service=ref)))

    def list_services(self) -> list[Service]:
        reply = self._call(lambda stub: stub.ListServices, pb.Empty())
        return [_service(message) for message in reply.services]

    def update_service(self, ref: str, spec: ServiceSpec, version: int = 0) -> Service:
        request = pb.UpdateServiceRequest(
            service=ref, spec=to_message(spec, pb.ServiceSpec), version=version
        )
        return _service(self._call(lambda stub: stub.UpdateService, request))

    def scale_service(self, ref: str, replicas: int) -> Service:
        request = pb.ScaleServiceRequest(service=ref, replicas=replicas)
        return _service(self._call(lambda stub: stub.ScaleService, request))

    def delete_service(self, ref: str) -> None:
        self._call(lambda stub: stub.DeleteService, pb.ServiceRef(service=ref))

    # -- networks --------------------------------------------------------------

    def create_network(self, spec: NetworkSpec) -> Network:
        message = to_message(spec, pb.NetworkSpec)
        return _network(self._call(lambda stub: stub.CreateNetwork, message))

    def get_network(self, ref: str) -> Network:
        return _network(self._call(lambda stub: stub.GetNetwork, pb.NetworkRef(network=ref)))

    def list_networks(self) -> list[Network]:
        reply = self._call(lambda stub: stub.ListNetworks, pb.Empty())
        return [_network(message) for message in reply.networks]

    def remove_network(self, ref: str) -> None:
        self._call(lambda stub: stub.RemoveNetwork, pb.NetworkRef(network=ref))

    def network_doctor(self, service: str = "", timeout: float = 0.0) -> list[DoctorReport]:
        """Every node's network checks; ``timeout``: seconds the leader waits for the
        nodes (0: its default)."""
        request = pb.NetworkDoctorRequest(service=service, timeout=timeout)
        # The leader waits for the nodes first: the call may take that long and more.
        deadline = (timeout or DEFAULT_DOCTOR_TIMEOUT) + self._timeout
        reply = self._call(lambda stub: stub.NetworkDoctor, request, deadline)
        return [_doctor_report(message) for message in reply.reports]

    # -- nodes -----------------------------------------------------------------

    def list_nodes(self) -> list[Node]:
        reply = self._call(lambda stub: stub.ListNodes, pb.Empty())
        return [_node(message) for message in reply.nodes]

    def get_node(self, ref: str) -> Node:
        return _node(self._call(lambda stub: stub.GetNode, pb.NodeRef(node=ref)))

    def update_node(
        self,
        ref: str,
        availability: Availability | None = None,
        label_add: dict[str, str] | None = None,
        label_rm: list[str] | None = None,
    ) -> Node:
        request = pb.UpdateNodeRequest(
            node=ref,
            availability=str(availability or ""),
            label_add=label_add or {},
            label_rm=label_rm or [],
        )
        return _node(self._call(lambda stub: stub.UpdateNode, request))

    def remove_node(self, ref: str, force: bool = False) -> None:
        self._call(lambda stub: stub.RemoveNode, pb.RemoveNodeRequest(node=ref, force=force))

    def promote_node(self, ref: str) -> Node:
        return _node(self._call(lambda stub: stub.PromoteNode, pb.NodeRef(node=ref)))

    def demote_node(self, ref: str, force: bool = False) -> Node:
        return _node(
            self._call(lambda stub: stub.DemoteNode, pb.DemoteNodeRequest(node=ref, force=force))
        )

    # -- tasks -----------------------------------------------------------------

    def list_tasks(self, service: str = "", node: str = "") -> list[Task]:
        reply = self._call(
            lambda stub: stub.ListTasks, pb.ListTasksRequest(service=service, node=node)
        )
        return [_task(message) for message in reply.tasks]

    def get_task(self, ref: str) -> Task:
        return _task(self._call(lambda stub: stub.GetTask, pb.TaskRef(task=ref)))

    # -- cluster ---------------------------------------------------------------

    def cluster_info(self) -> dict[str, Any]:
        return _all_fields(self._call(lambda stub: stub.GetClusterInfo, pb.Empty()))

    def join_token(self, role: str, rotate: bool = False) -> str:
        reply = self._call(
            lambda stub: stub.GetJoinToken, pb.JoinTokenRequest(role=role, rotate=rotate)
        )
        return str(reply.token)

    def backup(self) -> Backup:
        """A consistent copy of the cluster state plus the CA certificate and key."""
        reply = self._call(lambda stub: stub.Backup, pb.Empty())
        return Backup(decode_state(reply.state_json), bytes(reply.ca_cert), bytes(reply.ca_key))

    def events(self, kinds: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
        """Store events as ``{revision, action, kind, timestamp, object}``; ``object`` is a model.

        The stream has no deadline. A manager that is unavailable before the
        first event is skipped like for any other call.
        """
        request = pb.StreamEventsRequest(kinds=list(kinds))
        with closing(self._stream(lambda stub: stub.StreamEvents, request)) as messages:
            for message in messages:
                yield _event(message)

    def logs(
        self, service: str = "", task: str = "", follow: bool = False, tail: int = 0
    ) -> Iterator[LogLine]:
        """The output of a service's tasks, or of one task; ``tail``: last N lines (0: all).

        Without ``follow`` the stream ends after the lines written so far.
        """
        if bool(service) == bool(task):
            raise InvalidArgument("ask for the logs of one service or of one task")
        request = pb.LogsRequest(service=service, task=task, follow=follow, tail=tail)
        with closing(self._stream(lambda stub: stub.Logs, request)) as messages:
            for message in messages:
                yield LogLine(
                    task_id=str(message.task_id),
                    task_name=str(message.task_name),
                    node_id=str(message.node_id),
                    timestamp=float(message.timestamp),
                    stream=str(message.stream),
                    line=bytes(message.line),
                )

    def _stream(
        self, method: StreamMethod[Request, Reply], request: Request
    ) -> Generator[Reply, None, None]:
        """A server stream without a deadline, cancelled when it is closed.

        A manager that is unavailable before the first message is skipped like
        for any other call.
        """
        failures: list[str] = []
        for index in self._candidates():
            address = self._managers[index]
            stream = method(self._stub(address))(request)
            received = False
            try:
                for message in stream:
                    received = True
                    self._preferred = index
                    yield message
                return
            except grpc.RpcError as exc:
                if received or not _is_unavailable(exc):
                    raise error_from_rpc(exc) from None
                failures.append(f"{address}: {_reason(exc)}")
            finally:
                stream.cancel()
        raise _all_unavailable(failures)


def _is_unavailable(exc: grpc.RpcError) -> bool:
    # Covers an unreachable manager and one that says it cannot serve (no leader).
    return bool(exc.code() == grpc.StatusCode.UNAVAILABLE)


def _reason(exc: grpc.RpcError) -> str:
    """The server's own message, or the gist of a transport failure."""
    if ERROR_CODE_KEY in trailing_metadata(exc):
        return str(error_from_rpc(exc))
    return _TRANSPORT_PREFIX.sub("", str(error_from_rpc(exc))).removesuffix(": OK")


def _all_unavailable(failures: list[str]) -> WarrenError:
    if len(failures) == 1:
        return Unavailable(f"cannot reach manager {failures[0]}")
    return Unavailable("cannot reach any manager: " + "; ".join(failures))


def _service(message: pb.Service) -> Service:
    service: Service = from_message(Service, message)
    return service


def _network(message: pb.Network) -> Network:
    network: Network = from_message(Network, message)
    return network


def _doctor_report(message: pb.DoctorReport) -> DoctorReport:
    report: DoctorReport = from_message(DoctorReport, message)
    return report


def _node(message: pb.Node) -> Node:
    node: Node = from_message(Node, message)
    return node


def _task(message: pb.Task) -> Task:
    task: Task = from_message(Task, message)
    return task


def _all_fields(message: Message) -> dict[str, Any]:
    """Every field, zero values included (``ListFields`` would drop them)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        out[field.name] = list(value) if field.is_repeated else value
    return out


def _event(message: pb.Event) -> dict[str, Any]:
    return {
        "revision": int(message.revision),
        "action": str(message.action),
        "kind": str(message.kind),
        "timestamp": float(message.timestamp),
        "object": _event_object(message),
    }


def _event_object(message: pb.Event) -> Node | Service | Task | None:
    """The object the event carries, when it is the one its kind names."""
    carried = message.WhichOneof("object")
    if carried != message.kind:
        return None
    if carried == "node":
        return _node(message.node)
    if carried == "service":
        return _service(message.service)
    if carried == "task":
        return _task(message.task)
    return None
