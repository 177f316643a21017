"""The session's wire protocol: the gRPC adapter turns the node's protobuf
messages into the dispatcher's domain events and back, field for field."""

from __future__ import annotations

import base64

from factories import make_service, make_task

from warren.core.models import NodeRole, Resources, TaskStatus
from warren.core.networks import EndpointMode, PortConfig, PortProtocol, PublishMode, VirtualIP
from warren.core.node_view import NetworkView, ViewEndpoint, ViewNetwork, ViewPeer, ViewService
from warren.core.states import TaskState
from warren.manager.grpc_api import manager_message, node_event, role_update_message
from warren.manager.sessions import (
    Assignments,
    CancelLogs,
    Heartbeat,
    LogEntry,
    LogsChunk,
    LogsRequest,
    Registration,
    RoleUpdate,
    SessionStarted,
    StatusReport,
)
from warren.proto import warren_pb2 as pb
from warren.proto.convert import from_message


def test_what_a_node_sends_becomes_a_domain_event() -> None:
    register = pb.Register(
        hostname="w1", address="10.0.0.7", resources=pb.Resources(cpus=2.0, memory_bytes=1024)
    )
    assert node_event(pb.WorkerMessage(register=register)) == Registration(
        "w1", "10.0.0.7", Resources(2.0, 1024)
    )
    status = pb.StatusReport(statuses={"t1": pb.TaskStatus(state="running", timestamp=3.0)})
    assert node_event(pb.WorkerMessage(status=status)) == StatusReport(
        {"t1": TaskStatus(TaskState.RUNNING, timestamp=3.0)}
    )
    chunk = pb.LogsChunk(
        request_id="r1",
        entries=[pb.LogEntry(timestamp=1.5, stream="stdout", line=b"hi\n")],
        done=True,
        error="gone",
    )
    assert node_event(pb.WorkerMessage(logs=chunk)) == LogsChunk(
        "r1", [LogEntry(1.5, "stdout", b"hi\n")], done=True, error="gone"
    )
    assert node_event(pb.WorkerMessage(heartbeat=pb.Heartbeat())) == Heartbeat()
    # An empty message (one a newer agent may send) is still a sign of life.
    assert node_event(pb.WorkerMessage()) == Heartbeat()


def test_what_the_dispatcher_sends_becomes_the_message_the_node_reads() -> None:
    session = manager_message(SessionStarted("n1", 2.5, ["10.0.0.1:4242"]))
    assert session == pb.ManagerMessage(
        session=pb.SessionInfo(node_id="n1", heartbeat_period=2.5, managers=["10.0.0.1:4242"])
    )
    task = make_task(make_service(), id="t1", node_id="n1", state=TaskState.ASSIGNED)
    assignments = manager_message(Assignments([task], ["t0"], full=False)).assignments
    assert [t.id for t in assignments.tasks] == ["t1"]
    assert (list(assignments.removed), assignments.full) == (["t0"], False)
    logs = manager_message(LogsRequest("r1", "t1", follow=True, tail=10))
    assert logs == pb.ManagerMessage(
        logs=pb.TaskLogsRequest(request_id="r1", task_id="t1", follow=True, tail=10)
    )
    cancel = manager_message(CancelLogs("r1"))
    assert cancel == pb.ManagerMessage(cancel_logs=pb.CancelLogs(request_id="r1"))


def test_a_node_registers_its_wireguard_identity() -> None:
    key = base64.b64encode(b"k" * 32).decode()
    register = pb.Register(hostname="w1", wireguard_public_key=key, wireguard_port=51820)
    wire = pb.WorkerMessage.FromString(pb.WorkerMessage(register=register).SerializeToString())
    assert node_event(wire) == Registration(
        "w1", "", Resources(), wireguard_public_key=key, wireguard_port=51820
    )
    # An older agent sends neither: the node is not in the mesh.
    older = node_event(pb.WorkerMessage(register=pb.Register(hostname="w1")))
    assert isinstance(older, Registration)
    assert (older.wireguard_public_key, older.wireguard_port) == ("", 0)


def test_a_network_view_travels_whole_and_reads_back_equal() -> None:
    view = NetworkView(
        revision=42,
        networks=(
            ViewNetwork("net-a", "front", "10.32.0.0/16", ("10.32.64.0/24", "10.32.65.0/24")),
            ViewNetwork("net-b", "back", "10.33.0.0/16"),
        ),
        services=(
            ViewService(
                "s1",
                "web",
                EndpointMode.VIP,
                ("net-a",),
                (VirtualIP("net-a", "10.32.0.2/16"),),
                (
                    PortConfig(target=80, published=8080),
                    PortConfig(
                        target=53, published=30053, protocol=PortProtocol.UDP, mode=PublishMode.HOST
                    ),
                ),
                (
                    ViewEndpoint("t1", "n1", "net-a", "10.32.64.2/24"),
                    ViewEndpoint("t2", "n2", "net-a", "10.32.65.2/24", weight=3),
                ),
            ),
            ViewService("s2", "db", EndpointMode.DNSRR, ("net-b",)),
        ),
        peers=(ViewPeer("n2", base64.b64encode(b"p" * 32).decode(), "[fd00::2]:51820", ()),),
    )
    message = manager_message(view)
    assert message.WhichOneof("message") == "network_view"
    wire = pb.ManagerMessage.FromString(message.SerializeToString())
    # What the agent makes of it.
    assert from_message(NetworkView, wire.network_view) == view
    assert from_message(NetworkView, pb.NetworkView()) == NetworkView()


def test_a_role_update_names_no_desired_role_as_empty() -> None:
    waiting = role_update_message(RoleUpdate(NodeRole.WORKER, NodeRole.MANAGER, ["m:1"]))
    assert waiting == pb.RoleUpdate(role="worker", desired_role="manager", managers=["m:1"])
    settled = role_update_message(RoleUpdate(NodeRole.MANAGER, None, []))
    assert settled == pb.RoleUpdate(role="manager", desired_role="")
