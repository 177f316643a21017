"""The session's wire protocol: the gRPC adapter turns the node's protobuf
messages into the dispatcher's domain events and back, field for field."""

from __future__ import annotations

from factories import make_service, make_task

from warren.core.models import NodeRole, Resources, TaskStatus
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


def test_a_role_update_names_no_desired_role_as_empty() -> None:
    waiting = role_update_message(RoleUpdate(NodeRole.WORKER, NodeRole.MANAGER, ["m:1"]))
    assert waiting == pb.RoleUpdate(role="worker", desired_role="manager", managers=["m:1"])
    settled = role_update_message(RoleUpdate(NodeRole.MANAGER, None, []))
    assert settled == pb.RoleUpdate(role="manager", desired_role="")
