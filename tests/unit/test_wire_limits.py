"""Every value a model accepts travels every wire: REST JSON, protobuf, the log in etcd.

The specs are generated from the models' own field types and bounds
(``warren.core.validation``), edges included, so a field added later is
covered without touching this file; only fields with a syntax of their own
(names, keys, constraints, signals, paths) get a hand-written strategy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck as Health
from hypothesis import given, settings
from wire_strategies import model_strategy, specs

from warren.core.codec import from_dict, to_dict
from warren.core.errors import InvalidArgument
from warren.core.models import (
    MAX_REPLICAS,
    ContainerSpec,
    Node,
    NodeRole,
    Resources,
    RestartPolicy,
    Service,
    ServiceSpec,
    Task,
    TaskStatus,
)
from warren.core.states import TaskState
from warren.core.validation import INT32_MAX, MAX_SECONDS, clean_text, field_limits, show
from warren.manager import rest
from warren.manager.consensus import LocalConsensus
from warren.manager.dispatcher import Dispatcher, _Session
from warren.manager.etcd.log_entry import apply_entry, claim_entry, command_entry
from warren.manager.etcd.state_image import Fence
from warren.manager.events import EventBus
from warren.manager.grpc_api import manager_message
from warren.manager.store import MUST_NOT_EXIST, Kind, Store, put, txn
from warren.proto import warren_pb2 as pb
from warren.proto.convert import encodable, from_message, to_message


def _rest_round_trip(obj: Any) -> Any:
    # What the REST layer sends, read back the way it reads request bodies.
    body = json.dumps(to_dict(obj))
    data = json.loads(body, parse_float=rest._finite_float, parse_constant=rest._reject_constant)
    return from_dict(type(obj), data)


def _proto_round_trip(obj: Any, message_cls: Any) -> Any:
    wire = to_message(obj, message_cls).SerializeToString()
    return from_message(type(obj), message_cls.FromString(wire))


def _log_round_trip(service: Service) -> Service:
    # As a leader writes it: its claim, then the command tagged with its term.
    store = Store()
    _, fence = apply_entry(store, Fence(), claim_entry(3, "127.0.0.1:4242"))
    entry = command_entry(txn([put(service, MUST_NOT_EXIST)], at=1.0), term=3)
    result, _ = apply_entry(store, fence, entry)
    assert "error" not in result["results"][0], result
    stored: Service = store.get(Kind.SERVICE, service.id)
    return stored


# No deadline: one example is a few ms of pure work, but CI machines stall.
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[Health.too_slow, Health.large_base_example],
)
@given(specs)
def test_every_accepted_spec_round_trips_through_every_wire(spec: ServiceSpec) -> None:
    assert _rest_round_trip(spec) == spec
    assert _proto_round_trip(spec, pb.ServiceSpec) == spec
    service = Service(id="s1", spec=spec, spec_version=3, created_at=1.5)
    assert _log_round_trip(service).spec == spec
    task = Task("t1", "s1", spec.name, spec, 3, slot=INT32_MAX)
    assert _proto_round_trip(task, pb.Task) == task
    assert _rest_round_trip(task) == task


@settings(max_examples=100, deadline=None)
@given(model_strategy(Node), model_strategy(TaskStatus))
def test_every_accepted_node_and_status_round_trips(node: Node, status: TaskStatus) -> None:
    assert _proto_round_trip(node, pb.Node) == node
    assert _rest_round_trip(node) == node
    assert _proto_round_trip(status, pb.TaskStatus) == status


# -- what the models refuse: past every bound, in every spelling that reaches them ---

_TOO_BIG = [
    ("placement.max_replicas_per_node", MAX_REPLICAS + 1),
    ("placement.max_replicas_per_node", 2**31),
    ("replicas", 2**31),
    ("restart", {"max_attempts": 2**31}),
    ("restart", {"delay": MAX_SECONDS + 1}),
    ("container.health", {"cmd": ["true"], "retries": 2**31}),
    ("container.health", {"cmd": ["true"], "interval": 1e300}),
    ("resources.limits", {"memory_bytes": 2**63}),
    ("resources.limits", {"memory_bytes": 10**30}),
    ("resources.reservations", {"cpus": 10**400}),
    ("resources.limits", {"cpus": 4097}),
    ("container.stop_grace_period", 10**400),
    ("container.stop_grace_period", MAX_SECONDS + 1),
]

_BAD_TEXT = [
    ("container.image", "busybox\udc80"),
    ("container.image", "busy\x00box"),
    ("container.env", {"A": "\ud800"}),
    ("container.env", {"A": "x\x00y"}),
    ("labels", {"team": "\udfff"}),
    ("container.args", ["ok", "\ud83d"]),
    ("container.entrypoint", ["\x00"]),
    ("container.user", "\udc00"),
    ("container.image", "i" * 1025),
]


def _spec_with(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``spec`` (a JSON object) with the field at a dotted path set."""
    *groups, name = path.split(".")
    target = spec
    for group in groups:
        target = target.setdefault(group, {})
    target[name] = value
    return spec


@pytest.mark.parametrize(("name", "value"), _TOO_BIG + _BAD_TEXT)
def test_a_value_no_wire_can_carry_is_refused_everywhere(name: str, value: Any) -> None:
    data = _spec_with({"name": "poison", "container": {"image": "busybox"}}, name, value)
    # REST and the log decode with the codec; gRPC too, after protobuf.
    with pytest.raises(InvalidArgument) as refused:
        from_dict(ServiceSpec, data)
    message = str(refused.value)
    assert "\n" not in message and "\x00" not in message and len(message) < 200
    # A command carrying it (written by hand: no proposer would build one) is
    # refused when applied, and changes nothing.
    good = to_dict(
        Service(id="s1", spec=ServiceSpec(name="poison", container=ContainerSpec(image="busybox")))
    )
    _spec_with(good["spec"], name, value)
    store = Store()
    command = {"op": "txn", "ops": [{"put": "service", "object": good, "expect": 0}]}
    command.update(at=1.0, atomic=True)
    result = store.apply(json.loads(json.dumps(command)))
    assert result["error"] == "invalid_argument"
    assert store.revision == 0 and store.list(Kind.SERVICE) == []


def test_huge_numbers_are_refused_with_the_field_named() -> None:
    with pytest.raises(InvalidArgument, match="max_replicas_per_node must be between 0 and"):
        spec = {"name": "p", "container": {"image": "b"}}
        from_dict(ServiceSpec, {**spec, "placement": {"max_replicas_per_node": 2**31}})
    with pytest.raises(InvalidArgument, match="stop_grace_period: number out of range"):
        from_dict(
            ServiceSpec, {"name": "p", "container": {"image": "b", "stop_grace_period": 10**400}}
        )
    with pytest.raises(InvalidArgument, match="a number too large to show"):
        Resources(memory_bytes=10**60)


def test_node_labels_and_hostnames_obey_the_same_rules() -> None:
    with pytest.raises(InvalidArgument, match="labels value"):
        Node("n1", NodeRole.WORKER, "h", labels={"zone": "\udc80"})
    with pytest.raises(InvalidArgument, match="hostname is too long"):
        Node("n1", NodeRole.WORKER, "h" * 254)


def test_status_texts_from_a_runtime_are_made_valid_not_refused() -> None:
    status = TaskStatus(message="bad \udc80 byte\x00", err="e" * 10_000)
    assert status.message == "bad \ufffd byte\\x00"
    assert len(status.err) == 4096 and status.err.endswith("...")
    assert _proto_round_trip(status, pb.TaskStatus) == status
    assert clean_text("plain", 10) == "plain"


def test_show_bounds_and_escapes_what_it_echoes() -> None:
    assert show("a\nb\x00") == "'a\\nb\\x00'"
    assert show("x" * 500) == "'" + "x" * 40 + "...'"
    assert show(10**400) == "a number too large to show"
    assert show(-7) == "-7"


def test_a_stored_object_that_cannot_be_encoded_is_left_out_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As an older version could have stored it: built around validation.
    good = ServiceSpec(name="good", container=ContainerSpec(image="busybox"))
    poison = ServiceSpec(name="poison", container=ContainerSpec(image="busybox"))
    object.__setattr__(poison.placement, "max_replicas_per_node", 2**31)
    tasks = [Task("t-good", "s1", "good", good, 1), Task("t-bad", "s2", "poison", poison, 1)]
    messages = encodable(tasks, pb.Task)
    assert [m.id for m in messages] == ["t-good"]
    assert "t-bad cannot be encoded" in caplog.text


def test_restart_policy_bounds_come_from_the_model() -> None:
    bounds = field_limits(
        next(f for f in dataclasses.fields(RestartPolicy) if f.name == "max_attempts").metadata,
        int,
    )
    assert bounds == {"minimum": 0, "maximum": INT32_MAX}
    assert not math.isinf(bounds["maximum"])


async def test_a_poisoned_task_does_not_stop_the_assignments_of_its_node() -> None:
    # The bug this guards against: one task that protobuf could not carry ended
    # its node's session every 0.3 s, so no task on that node ever started.
    good = ServiceSpec(name="good", container=ContainerSpec(image="busybox"))
    poison = ServiceSpec(name="poison", container=ContainerSpec(image="busybox"))
    object.__setattr__(
        poison.placement, "max_replicas_per_node", 2**31
    )  # as an older version stored it
    assigned = TaskStatus(state=TaskState.ASSIGNED)
    store = Store()
    store.load(
        [
            Task("t-good", "s1", "good", good, 1, slot=1, node_id="n1", status=assigned),
            Task("t-bad", "s2", "poison", poison, 1, slot=1, node_id="n1", status=assigned),
        ]
    )
    consensus = LocalConsensus(store)
    bus = EventBus(store, asyncio.get_running_loop())
    dispatcher = Dispatcher(consensus, bus, 10.0, list)
    assignments = dispatcher._assignments_if_changed(_Session("n1"))
    assert assignments is not None
    message = manager_message(assignments)
    assert [t.id for t in message.assignments.tasks] == ["t-good"]
    assert message.assignments.full


def test_a_missing_required_field_is_named_not_a_python_message() -> None:
    with pytest.raises(InvalidArgument, match=r"^spec: missing field 'name'$"):
        from_dict(ServiceSpec, {"container": {"image": "busybox"}}, "spec")
    with pytest.raises(InvalidArgument, match=r"^task.spec: missing field 'container'$"):
        from_dict(
            Task,
            {
                "id": "t",
                "service_id": "s",
                "service_name": "w",
                "spec": {"name": "w"},
                "spec_version": 1,
            },
        )
