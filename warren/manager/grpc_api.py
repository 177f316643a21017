"""gRPC servicers over mTLS. Authorization is decided here, by certificate role.

The server trusts the cluster CA plus one "join root" per live join token
(see ``warren.security.join``); the credentials fetcher runs before every
handshake, so a rotated token stops working at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar, assert_never

import grpc

from warren.core.codec import from_dict
from warren.core.doctor import DoctorReport, DoctorRequest, doctor_timeout, no_answer
from warren.core.errors import (
    InvalidArgument,
    NotLeader,
    PermissionDenied,
    Unauthenticated,
    WarrenError,
    safe_message,
)
from warren.core.models import (
    Availability,
    Cluster,
    Node,
    NodeRole,
    Resources,
    ServiceSpec,
    Task,
    TaskStatus,
)
from warren.core.networks import NetworkSpec
from warren.core.node_view import NetworkView
from warren.core.states import TaskState
from warren.core.validation import show
from warren.manager import join_tokens
from warren.manager.backup import encode_state, take_backup
from warren.manager.control import ControlService
from warren.manager.dispatcher import Dispatcher
from warren.manager.events import EventBus, public_kinds
from warren.manager.metrics import Metrics
from warren.manager.sessions import (
    Assignments,
    CancelLogs,
    Heartbeat,
    LogEntry,
    LogsChunk,
    LogsRequest,
    ManagerEvent,
    NodeEvent,
    Registration,
    RoleUpdate,
    SessionStarted,
    StatusReport,
)
from warren.manager.store import Kind, StoreEvent
from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.proto.convert import encodable, from_message, message_to_dict, to_message
from warren.proto.errors import (
    CONSISTENCY_KEY,
    ERROR_CODE_KEY,
    GRPC_STATUS,
    LEADER_KEY,
    LINEARIZABLE,
)
from warren.security.join import join_root_cert
from warren.security.tls import PeerIdentity, identity_from_pem

log = logging.getLogger(__name__)

ADMIN_ROLES = frozenset({"admin", "manager"})
NODE_ROLES = frozenset({"worker", "manager"})

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
# The helpers below serve every method, whatever its request and reply messages.
ServicerContext = grpc.aio.ServicerContext[Any, Any]


def peer_identity(context: ServicerContext) -> PeerIdentity:
    auth = context.auth_context()
    pems = list(auth.get("x509_pem_cert", ())) if auth else []
    if not pems:
        raise Unauthenticated("a client certificate is required")
    return identity_from_pem(pems[0])


def peer_ip(context: ServicerContext) -> str:
    """The caller's IP address ("" when not over IP): gRPC says ipv4:A.B.C.D:PORT
    or ipv6:[ADDRESS]:PORT, the brackets percent-encoded by recent versions."""
    family, _, rest = urllib.parse.unquote(context.peer()).partition(":")
    if family not in ("ipv4", "ipv6"):
        return ""
    return rest.rpartition(":")[0].strip("[]")


def _require(context: ServicerContext, roles: frozenset[str]) -> PeerIdentity:
    identity = peer_identity(context)
    if identity.role not in roles:
        who = identity.role or "a joining node"
        raise PermissionDenied(f"{who} certificates may not call this method")
    return identity


async def _abort(context: ServicerContext, exc: WarrenError) -> None:
    metadata: tuple[tuple[str, str], ...] = ((ERROR_CODE_KEY, exc.code),)
    if isinstance(exc, NotLeader) and exc.leader:
        metadata += ((LEADER_KEY, exc.leader),)
    await context.abort(
        GRPC_STATUS.get(exc.code, grpc.StatusCode.INTERNAL),
        safe_message(exc.message),
        trailing_metadata=metadata,
    )


async def _abort_unexpected(context: ServicerContext, method: str, exc: Exception) -> None:
    # Never a Python message on the wire: the detail goes to the log.
    log.error("gRPC %s failed", method, exc_info=exc)
    await _abort(context, WarrenError("internal error; see the manager's log"))


def _require_admin(control: ControlService, context: ServicerContext) -> None:
    identity = _require(context, ADMIN_ROLES)
    if identity.role == "manager":
        control.check_manager_caller(identity.node_id)


def _availability(text: str) -> Availability:
    try:
        return Availability(text or Availability.ACTIVE)
    except ValueError:
        allowed = ", ".join(a.value for a in Availability)
        raise InvalidArgument(f"invalid availability {show(text)}: use {allowed}") from None


def _spec(request: Any) -> ServiceSpec:
    """The request's spec, decoded as strictly as REST decodes a body; proto3
    sends no empty fields, so an unset required field is a missing one."""
    data = message_to_dict(request.spec) if request.HasField("spec") else None
    if data is None:
        raise InvalidArgument("request: missing field 'spec'")
    for field in dataclasses.fields(ServiceSpec):
        required = field.default is dataclasses.MISSING
        if required and field.default_factory is dataclasses.MISSING and field.name not in data:
            raise InvalidArgument(f"spec: missing field '{field.name}'")
    return from_dict(ServiceSpec, data, "spec")


def _wants_linearizable(context: ServicerContext) -> bool:
    return any(
        key == CONSISTENCY_KEY and value == LINEARIZABLE
        for key, value in context.invocation_metadata() or ()
    )


def admin_rpc(method: F) -> F:
    """Check the caller is an admin or manager, time the call, map Warren errors."""

    @wraps(method)
    async def wrapper(self: Any, request: Any, context: ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            _require_admin(self.control, context)
            if _wants_linearizable(context):
                await self.control.read_barrier()
            return await method(self, request, context)
        except WarrenError as exc:
            await _abort(context, exc)
        except Exception as exc:
            await _abort_unexpected(context, method.__name__, exc)
        finally:
            if self.metrics is not None:
                self.metrics.observe("grpc", method.__name__, time.perf_counter() - started)

    return wrapper  # type: ignore[return-value]


class ControlServicer(pb_grpc.ControlServicer):
    def __init__(
        self,
        control: ControlService,
        bus: EventBus,
        dispatcher: Dispatcher,
        metrics: Metrics | None,
    ) -> None:
        self.control = control
        self.bus = bus
        self.dispatcher = dispatcher
        self.metrics = metrics

    @admin_rpc
    async def CreateService(self, request: Any, context: Any) -> Any:
        spec = _spec(request)
        return to_message(await self.control.create_service(spec), pb.Service)

    @admin_rpc
    async def GetService(self, request: Any, context: Any) -> Any:
        return to_message(self.control.get_service(request.service), pb.Service)

    @admin_rpc
    async def ListServices(self, request: Any, context: Any) -> Any:
        services = encodable(self.control.list_services(), pb.Service)
        return pb.ListServicesResponse(services=services)

    @admin_rpc
    async def UpdateService(self, request: Any, context: Any) -> Any:
        spec = _spec(request)
        if request.version < 0:
            raise InvalidArgument("version cannot be negative")
        service = await self.control.update_service(request.service, spec, request.version)
        return to_message(service, pb.Service)

    @admin_rpc
    async def ScaleService(self, request: Any, context: Any) -> Any:
        service = await self.control.scale_service(request.service, request.replicas)
        return to_message(service, pb.Service)

    @admin_rpc
    async def DeleteService(self, request: Any, context: Any) -> Any:
        await self.control.delete_service(request.service)
        return pb.Empty()

    @admin_rpc
    async def CreateNetwork(self, request: Any, context: Any) -> Any:
        spec = from_message(NetworkSpec, request)
        return to_message(await self.control.create_network(spec), pb.Network)

    @admin_rpc
    async def GetNetwork(self, request: Any, context: Any) -> Any:
        return to_message(self.control.get_network(request.network), pb.Network)

    @admin_rpc
    async def ListNetworks(self, request: Any, context: Any) -> Any:
        networks = encodable(self.control.list_networks(), pb.Network)
        return pb.ListNetworksResponse(networks=networks)

    @admin_rpc
    async def RemoveNetwork(self, request: Any, context: Any) -> Any:
        await self.control.remove_network(request.network)
        return pb.Empty()

    @admin_rpc
    async def NetworkDoctor(self, request: Any, context: Any) -> Any:
        timeout = doctor_timeout(request.timeout)
        service = self.control.get_service(request.service).spec.name if request.service else ""
        reports = await self.dispatcher.network_doctor(service, timeout)
        return pb.NetworkDoctorResponse(reports=[to_message(r, pb.DoctorReport) for r in reports])

    @admin_rpc
    async def ListNodes(self, request: Any, context: Any) -> Any:
        return pb.ListNodesResponse(nodes=encodable(self.control.list_nodes(), pb.Node))

    @admin_rpc
    async def GetNode(self, request: Any, context: Any) -> Any:
        return to_message(self.control.describe_node(request.node), pb.Node)

    @admin_rpc
    async def UpdateNode(self, request: Any, context: Any) -> Any:
        availability = _availability(request.availability) if request.availability else None
        node = await self.control.update_node(
            request.node, availability, dict(request.label_add), list(request.label_rm)
        )
        return to_message(node, pb.Node)

    @admin_rpc
    async def RemoveNode(self, request: Any, context: Any) -> Any:
        await self.control.remove_node(request.node, request.force)
        return pb.Empty()

    @admin_rpc
    async def PromoteNode(self, request: Any, context: Any) -> Any:
        return to_message(await self.control.promote_node(request.node), pb.Node)

    @admin_rpc
    async def DemoteNode(self, request: Any, context: Any) -> Any:
        return to_message(await self.control.demote_node(request.node, request.force), pb.Node)

    @admin_rpc
    async def ListTasks(self, request: Any, context: Any) -> Any:
        tasks = self.control.list_tasks(request.service, request.node)
        return pb.ListTasksResponse(tasks=encodable(tasks, pb.Task))

    @admin_rpc
    async def GetTask(self, request: Any, context: Any) -> Any:
        return to_message(self.control.get_task(request.task), pb.Task)

    @admin_rpc
    async def GetClusterInfo(self, request: Any, context: Any) -> Any:
        return pb.ClusterInfo(**self.control.cluster_info())

    @admin_rpc
    async def GetJoinToken(self, request: Any, context: Any) -> Any:
        if request.rotate:
            token = await self.control.rotate_join_token(request.role)
        else:
            token = self.control.join_token(request.role)
        return pb.JoinTokenResponse(token=token)

    @admin_rpc
    async def Backup(self, request: Any, context: Any) -> Any:
        backup = await take_backup(self.control.consensus, self.control.ca)
        return pb.BackupData(
            state_json=await asyncio.to_thread(encode_state, backup.state),
            ca_cert=backup.ca_cert,
            ca_key=backup.ca_key,
            revision=backup.state.revision,
        )

    async def StreamEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            _require_admin(self.control, context)
            kinds = public_kinds(request.kinds)
        except WarrenError as exc:
            await _abort(context, exc)
            return
        subscription = self.bus.subscribe(kinds, maxsize=10_000)
        try:
            async for event in subscription:
                yield event_message(event)
        finally:
            subscription.close()

    async def Logs(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            _require_admin(self.control, context)
            tasks = self._log_sources(request)
        except WarrenError as exc:
            await _abort(context, exc)
            return
        lines: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)
        pumps = [asyncio.create_task(self._pump_logs(t, request, lines)) for t in tasks]
        ended = 0
        try:
            while ended < len(pumps):
                item = await lines.get()
                if item is None:
                    ended += 1
                elif isinstance(item, WarrenError):
                    await _abort(context, item)
                    return
                else:
                    yield item
        finally:
            for pump in pumps:
                pump.cancel()

    def _log_sources(self, request: Any) -> list[Task]:
        if bool(request.service) == bool(request.task):
            raise InvalidArgument("ask for the logs of one service or of one task")
        if request.tail < 0:
            raise InvalidArgument(f"tail must be 0 (everything) or more, not {request.tail}")
        if request.task:
            return [self.control.get_task(request.task)]
        tasks = self.control.list_tasks(service=request.service)
        # Tasks whose container exists: started and not yet gone.
        return [t for t in tasks if t.node_id and t.status.state in _WITH_CONTAINER]

    async def _pump_logs(self, task: Task, request: Any, lines: asyncio.Queue[Any]) -> None:
        try:
            async for entry in self.dispatcher.task_logs(task, request.follow, request.tail):
                await lines.put(
                    pb.LogLine(
                        task_id=task.id,
                        task_name=task.name,
                        node_id=task.node_id,
                        timestamp=entry.timestamp,
                        stream=entry.stream,
                        line=entry.line,
                    )
                )
        except WarrenError as exc:
            await lines.put(exc)
        finally:
            await lines.put(None)


_WITH_CONTAINER = frozenset({TaskState.STARTING, TaskState.RUNNING})

_EVENT_FIELD = {
    Kind.NODE: ("node", pb.Node),
    Kind.SERVICE: ("service", pb.Service),
    Kind.TASK: ("task", pb.Task),
}


def event_message(event: StoreEvent) -> Any:
    message = pb.Event(
        revision=event.revision,
        action=str(event.action),
        kind=str(event.kind),
        timestamp=event.timestamp,
    )
    if event.kind in _EVENT_FIELD:
        name, cls = _EVENT_FIELD[event.kind]
        getattr(message, name).CopyFrom(to_message(event.object, cls))
    return message


# -- the dispatcher's domain events <-> the session's protobuf messages ------------


def node_event(message: pb.WorkerMessage) -> NodeEvent:
    """A ``WorkerMessage`` as the dispatcher reads it."""
    kind = message.WhichOneof("message")
    if kind == "register":
        register = message.register
        resources = from_message(Resources, register.resources)
        return Registration(
            register.hostname,
            register.address,
            resources,
            wireguard_public_key=register.wireguard_public_key,
            wireguard_port=register.wireguard_port,
        )
    if kind == "status":
        statuses = message.status.statuses
        return StatusReport(
            {task_id: from_message(TaskStatus, s) for task_id, s in statuses.items()}
        )
    if kind == "logs":
        logs = message.logs
        entries = [LogEntry(e.timestamp, e.stream, e.line) for e in logs.entries]
        return LogsChunk(logs.request_id, entries, logs.done, logs.error)
    if kind == "doctor":
        return _doctor_report(message.doctor)
    # A heartbeat, or a message this manager does not know: a sign of life still.
    return Heartbeat()


def _doctor_report(message: pb.DoctorReport) -> DoctorReport:
    """The node's report; one this manager cannot read is a failed row, not the
    end of the session."""
    try:
        report: DoctorReport = from_message(DoctorReport, message)
        return report
    except WarrenError as exc:
        reason = f"unreadable report: {exc}"
        hint = "does the node run another Warren version? upgrade it"
        return no_answer(str(message.request_id)[:64], "-", reason, hint)


async def node_events(messages: AsyncIterator[pb.WorkerMessage]) -> AsyncIterator[NodeEvent]:
    async for message in messages:
        yield node_event(message)


def manager_message(event: ManagerEvent) -> pb.ManagerMessage:
    """A dispatcher event as the ``ManagerMessage`` the node reads."""
    if isinstance(event, SessionStarted):
        info = pb.SessionInfo(
            node_id=event.node_id, heartbeat_period=event.heartbeat_period, managers=event.managers
        )
        return pb.ManagerMessage(session=info)
    if isinstance(event, Assignments):
        # A task protobuf cannot carry is left out (and logged), not the end of
        # the session: the node's other tasks must still run.
        assignments = pb.Assignments(
            tasks=encodable(event.tasks, pb.Task), removed=event.removed, full=event.full
        )
        return pb.ManagerMessage(assignments=assignments)
    if isinstance(event, LogsRequest):
        request = pb.TaskLogsRequest(
            request_id=event.request_id, task_id=event.task_id, follow=event.follow, tail=event.tail
        )
        return pb.ManagerMessage(logs=request)
    if isinstance(event, CancelLogs):
        return pb.ManagerMessage(cancel_logs=pb.CancelLogs(request_id=event.request_id))
    if isinstance(event, NetworkView):
        return pb.ManagerMessage(network_view=to_message(event, pb.NetworkView))
    if isinstance(event, DoctorRequest):
        return pb.ManagerMessage(doctor=to_message(event, pb.DoctorRequest))
    assert_never(event)


def role_update_message(update: RoleUpdate) -> pb.RoleUpdate:
    return pb.RoleUpdate(
        role=str(update.role), desired_role=str(update.desired_role or ""), managers=update.managers
    )


async def session_messages(
    dispatcher: Dispatcher,
    node_id: str,
    requests: AsyncIterator[pb.WorkerMessage],
    peer_address: str = "",
) -> AsyncIterator[pb.ManagerMessage]:
    """A node's session on the wire: ``WorkerMessage`` in, ``ManagerMessage`` out."""
    events = dispatcher.session(node_id, node_events(requests), peer_address)
    try:
        async for event in events:
            yield manager_message(event)
    finally:
        await events.aclose()


async def role_update_messages(
    dispatcher: Dispatcher, node_id: str
) -> AsyncIterator[pb.RoleUpdate]:
    updates = dispatcher.watch_role(node_id)
    try:
        async for update in updates:
            yield role_update_message(update)
    finally:
        await updates.aclose()


class DispatcherServicer(pb_grpc.DispatcherServicer):
    def __init__(self, control: ControlService, dispatcher: Dispatcher) -> None:
        self.control = control
        self.dispatcher = dispatcher

    async def Join(self, request: Any, context: Any) -> Any:
        try:
            identity = peer_identity(context)
            if identity.joining_role is None:
                raise PermissionDenied("join with a join token, not a node certificate")
            if identity.joining_role != request.role:
                raise PermissionDenied(f"this token cannot join a {show(request.role)}")
            node, certificate = await self.control.join(
                request.secret,
                request.role,
                request.csr,
                request.hostname,
                dict(request.labels),
                request.api_address,
                request.raft_address,
                _availability(request.availability),
                source=peer_ip(context),
            )
        except WarrenError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc
        except Exception as exc:
            await _abort_unexpected(context, "Join", exc)
            raise AssertionError("unreachable") from exc
        log.info("node joined", extra={"node_id": node.id, "hostname": node.hostname})
        return self._join_reply(node, certificate)

    def _join_reply(self, node: Node, certificate: bytes) -> Any:
        reply = pb.JoinResponse(
            node_id=node.id,
            certificate=certificate,
            ca_certificate=self.control.ca.cert_pem,
            managers=self.control.manager_addresses(),
        )
        if node.role == NodeRole.MANAGER:
            # Over mTLS, to a holder of the manager token or to a node an admin
            # promoted: it will sign too.
            reply.ca_key = self.control.ca.key_pem
            reply.raft_peers.extend(self.control.raft_peers())
        return reply

    async def Promote(self, request: Any, context: Any) -> Any:
        try:
            identity = _require(context, NODE_ROLES)
            # The certificate names the node: a node can only promote itself,
            # and only once an admin asked for it.
            node, certificate = await self.control.accept_promotion(
                identity.node_id,
                request.csr,
                request.api_address,
                request.raft_address,
                source=peer_ip(context),
            )
        except WarrenError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc
        except Exception as exc:
            await _abort_unexpected(context, "Promote", exc)
            raise AssertionError("unreachable") from exc
        log.info("node promoted", extra={"node_id": node.id, "hostname": node.hostname})
        return self._join_reply(node, certificate)

    async def WatchRole(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            identity = _require(context, NODE_ROLES)
            async for update in role_update_messages(self.dispatcher, identity.node_id):
                yield update
        except WarrenError as exc:
            await _abort(context, exc)

    async def Session(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        try:
            identity = _require(context, NODE_ROLES)
            session = session_messages(
                self.dispatcher, identity.node_id, request_iterator, peer_address=peer_ip(context)
            )
            async for message in session:
                yield message
        except WarrenError as exc:
            await _abort(context, exc)


class ServerCredentials:
    """Server TLS that trusts the CA plus the current join roots."""

    def __init__(self, control: ControlService, ca_pem: bytes, cert_pem: bytes, key_pem: bytes):
        self._control = control
        self._ca_pem = ca_pem
        self._chain = [(key_pem, cert_pem + ca_pem)]
        self._tokens: tuple[str, ...] | None = None

    def _current(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the join tokens changed; None keeps the current one."""
        cluster = self._control.store.cluster()
        tokens = join_tokens.verification_key(cluster) if cluster else ()
        if tokens == self._tokens:
            return None
        self._tokens = tokens
        return self._configuration(cluster)

    def _configuration(self, cluster: Cluster | None) -> grpc.ServerCertificateConfiguration:
        roots = self._ca_pem
        if cluster is not None:
            for role in join_tokens.ROLES:
                secret = join_tokens.token_secret(cluster, role, self._control.ca)
                roots += join_root_cert(secret, role)
        return grpc.ssl_server_certificate_configuration(self._chain, root_certificates=roots)

    def credentials(self) -> grpc.ServerCredentials:
        cluster = self._control.store.cluster()
        self._tokens = join_tokens.verification_key(cluster) if cluster else ()
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(cluster),
            # grpc documents None from the fetcher as "no change"; its type stubs omit it.
            self._current,  # type: ignore[arg-type]
            require_client_authentication=True,
        )


async def start_grpc(
    control: ControlService,
    bus: EventBus,
    dispatcher: Dispatcher,
    metrics: Metrics | None,
    address: str,
    credentials: ServerCredentials,
) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.keepalive_time_ms", 10_000),
            # Agents ping every 2 s to notice silent cuts; allow it.
            ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    pb_grpc.add_ControlServicer_to_server(
        ControlServicer(control, bus, dispatcher, metrics), server
    )
    pb_grpc.add_DispatcherServicer_to_server(DispatcherServicer(control, dispatcher), server)
    server.add_secure_port(address, credentials.credentials())
    await server.start()
    return server
