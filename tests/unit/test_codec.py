"""Codec: lossless round trips, strict decoding with a path in every error."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from factories import make_node, make_service, make_task
from hypothesis import given
from hypothesis import strategies as st

from warren.core import flat_spec
from warren.core.codec import from_dict, to_dict
from warren.core.errors import InvalidArgument
from warren.core.models import (
    Availability,
    Cluster,
    ContainerSpec,
    NodeStatus,
    Placement,
    ResourceRequirements,
    Resources,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskStatus,
)
from warren.core.states import DESIRED_STATES, TaskState


@dataclass(frozen=True)
class _Scalars:
    """Covers the plain types no model field happens to use (bool)."""

    flag: bool = False
    count: int = 0
    ratio: float = 0.0
    note: str | None = None


def _json_round_trip(obj: Any) -> Any:
    """What the Raft log and the cache do: encode, go through JSON text, decode."""
    return from_dict(type(obj), json.loads(json.dumps(to_dict(obj))))


# --- round trips of hand-built models --------------------------------------

_SPEC = ServiceSpec(
    name="api",
    container=ContainerSpec(
        image="registry.local/api:2", args=("serve", "--port", "80"), env={"LOG_LEVEL": "debug"}
    ),
    mode=ServiceMode.REPLICATED,
    replicas=3,
    labels={"team": "edge"},
    restart=RestartPolicy(RestartCondition.ON_FAILURE, 1.5, 3, 60.0),
    resources=ResourceRequirements(
        reservations=Resources(0.5, 256 * 1024**2), limits=Resources(1.0, 512 * 1024**2)
    ),
    placement=Placement(
        constraints=("node.labels.zone==a", "node.role!=manager"), max_replicas_per_node=2
    ),
)

MODELS = [
    Resources(1.5, 1024),
    RestartPolicy(RestartCondition.NONE, 0.0, 2, 30.0),
    _SPEC,
    Service(id="svc1", spec=_SPEC, spec_version=4, created_at=1.0, updated_at=2.0, version=9),
    TaskStatus(TaskState.FAILED, "exited", "task exited with code 2", 2, "c1", 12.5),
    TaskStatus(TaskState.RUNNING, exit_code=None),
    make_task(make_service(replicas=2), slot=2, node_id="n1", state=TaskState.RUNNING),
    make_task(desired_state=TaskState.SHUTDOWN, state=TaskState.SHUTDOWN),
    make_node(labels={"zone": "a"}, status=NodeStatus.DOWN, availability=Availability.DRAIN),
    Cluster(
        id="c1",
        ca_fingerprint="sha256:abc",
        worker_token_hash="worker-hash",
        manager_token_hash="manager-hash",
        worker_token_sealed="v1:worker",
        manager_token_sealed="v1:manager",
        created_at=3.0,
        version=1,
    ),
    # As written before the secrets were hashed: old journals and backups hold it.
    Cluster(
        id="c1",
        worker_token_secret="worker-secret",
        manager_token_secret="manager-secret",
        ca_fingerprint="sha256:abc",
        created_at=3.0,
        version=1,
    ),
]


@pytest.mark.parametrize("obj", MODELS, ids=lambda o: type(o).__name__)
def test_every_model_round_trips(obj: Any) -> None:
    assert from_dict(type(obj), to_dict(obj)) == obj
    assert _json_round_trip(obj) == obj


def test_to_dict_gives_plain_json_values() -> None:
    data = to_dict(_SPEC)
    assert data["mode"] == "replicated"
    assert data["container"]["args"] == ["serve", "--port", "80"]
    assert data["resources"]["reservations"] == {"cpus": 0.5, "memory_bytes": 256 * 1024**2}
    assert data["restart"]["condition"] == "on-failure"
    assert json.loads(json.dumps(data)) == data


def test_missing_fields_take_their_defaults() -> None:
    spec = from_dict(ServiceSpec, {"name": "web", "container": {"image": "nginx"}})
    assert spec == ServiceSpec(name="web", container=ContainerSpec(image="nginx"))


def test_enum_values_decode_to_members() -> None:
    spec = from_dict(ServiceSpec, {**_WEB, "mode": "global"})
    assert spec.mode is ServiceMode.GLOBAL


# --- numbers ----------------------------------------------------------------


def test_an_integral_float_is_accepted_for_an_int() -> None:
    spec = from_dict(ServiceSpec, {**_WEB, "replicas": 3.0})
    assert spec.replicas == 3
    assert type(spec.replicas) is int


def test_an_int_is_accepted_for_a_float() -> None:
    resources = from_dict(Resources, {"cpus": 2, "memory_bytes": 4.0})
    assert resources == Resources(2.0, 4)
    assert type(resources.cpus) is float
    assert type(resources.memory_bytes) is int


# --- optional fields --------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [({}, None), ({"exit_code": None}, None), ({"exit_code": 137}, 137), ({"exit_code": 1.0}, 1)],
)
def test_optional_int(data: dict[str, Any], expected: int | None) -> None:
    assert from_dict(TaskStatus, data).exit_code == expected


def test_optional_still_checks_the_type() -> None:
    with pytest.raises(InvalidArgument, match=r"^taskstatus\.exit_code: expected an integer$"):
        from_dict(TaskStatus, {"exit_code": "137"})


# --- refusals, each with a path ---------------------------------------------

_WEB: dict[str, Any] = {"name": "web", "container": {"image": "nginx"}}


def _web(**container: Any) -> dict[str, Any]:
    return {"name": "web", "container": {"image": "nginx", **container}}


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        (ServiceSpec, [1, 2], "servicespec: expected an object"),
        (ServiceSpec, {**_WEB, "replica": 2}, "servicespec: unknown field 'replica'"),
        (ServiceSpec, {**_WEB, "replicas": True}, "servicespec.replicas: expected an integer"),
        (ServiceSpec, {**_WEB, "replicas": "3"}, "servicespec.replicas: expected an integer"),
        (ServiceSpec, {**_WEB, "replicas": 2.5}, "servicespec.replicas: expected an integer"),
        (ServiceSpec, {**_WEB, "replicas": None}, "servicespec.replicas: expected an integer"),
        (ServiceSpec, _web(image=7), "servicespec.container.image: expected a string"),
        (ServiceSpec, _web(args="serve"), "servicespec.container.args: expected a list"),
        (ServiceSpec, _web(args=["a", 1]), "servicespec.container.args[1]: expected a string"),
        (ServiceSpec, _web(env=["A=1"]), "servicespec.container.env: expected an object"),
        (ServiceSpec, _web(env={"A": 1}), "servicespec.container.env.A: expected a string"),
        (ServiceSpec, {"name": "web", "container": "nginx"}, "servicespec.container: expected an"),
        (
            ServiceSpec,
            {**_WEB, "mode": "batch"},
            "servicespec.mode: 'batch' is not one of: replicated, global",
        ),
        (
            ServiceSpec,
            {**_WEB, "resources": {"reservations": {"cpus": "1"}}},
            "servicespec.resources.reservations.cpus: expected a number",
        ),
        (
            ServiceSpec,
            {**_WEB, "resources": {"reservations": {"cpus": False}}},
            "servicespec.resources.reservations.cpus: expected a number",
        ),
        (
            ServiceSpec,
            {**_WEB, "restart": {"condition": "sometimes"}},
            "servicespec.restart.condition: 'sometimes' is not one of: none, on-failure,",
        ),
        (
            ServiceSpec,
            {**_WEB, "restart": {"delay": 1, "tries": 3}},
            "servicespec.restart: unknown field 'tries'",
        ),
        (Resources, {"memory_bytes": 1.5}, "resources.memory_bytes: expected an integer"),
        (TaskStatus, {"state": "sleeping"}, "taskstatus.state: 'sleeping' is not one of:"),
        (_Scalars, {"flag": 1}, "_scalars.flag: expected true or false"),
        (_Scalars, {"flag": "true"}, "_scalars.flag: expected true or false"),
        (_Scalars, {"count": False}, "_scalars.count: expected an integer"),
        (_Scalars, {"ratio": "0.5"}, "_scalars.ratio: expected a number"),
        (_Scalars, {"ratio": True}, "_scalars.ratio: expected a number"),
        (_Scalars, {"note": 3}, "_scalars.note: expected a string"),
    ],
)
def test_bad_input_is_refused_with_its_path(cls: type[Any], data: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        from_dict(cls, data)
    assert str(info.value).startswith(message)


def test_errors_deep_in_a_task_name_the_full_path() -> None:
    data = to_dict(make_task())
    data["spec"]["resources"]["reservations"]["cpus"] = "lots"
    with pytest.raises(
        InvalidArgument, match=r"^task\.spec\.resources\.reservations\.cpus: expected a number"
    ):
        from_dict(Task, data)
    data = to_dict(make_task())
    data["status"]["state"] = "zombie"
    with pytest.raises(InvalidArgument, match=r"^task\.status\.state: 'zombie' is not one of"):
        from_dict(Task, data)


def test_the_caller_can_name_the_root_of_the_path() -> None:
    with pytest.raises(InvalidArgument, match=r"^spec\.replicas: expected an integer$"):
        from_dict(ServiceSpec, {**_WEB, "replicas": "two"}, path="spec")


def test_a_missing_required_field_is_refused_with_the_path() -> None:
    with pytest.raises(InvalidArgument, match=r"^servicespec: .*'container'"):
        from_dict(ServiceSpec, {"name": "web"})
    with pytest.raises(InvalidArgument, match=r"^servicespec\.container: .*'image'"):
        from_dict(ServiceSpec, {"name": "web", "container": {}})


def test_model_validation_still_runs() -> None:
    with pytest.raises(InvalidArgument, match="replicas must be between"):
        from_dict(ServiceSpec, {**_WEB, "replicas": -1})
    with pytest.raises(InvalidArgument, match="desired state must be running or shutdown"):
        data = to_dict(make_task())
        from_dict(Task, {**data, "desired_state": "complete"})


def test_the_scalars_helper_decodes_good_values() -> None:
    decoded = from_dict(_Scalars, {"flag": True, "count": 2.0, "ratio": 1, "note": None})
    assert decoded == _Scalars(True, 2, 1.0, None)


@pytest.mark.parametrize(
    "data",
    [
        {"name": "web\n", "container": {"image": "x"}},
        {**_WEB, "labels": {"team\n": "a"}},
        _web(env={"PATH\n": "/bin"}),
    ],
    ids=["name", "label-key", "env-key"],
)
def test_a_trailing_newline_is_not_a_valid_name(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        from_dict(ServiceSpec, data)


# --- properties: random specs and tasks built through the codec -----------

# Any text but NUL, which models refuse (see test_wire_limits.py).
_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=12)
_name = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
_label_key = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_./-]{0,15}\Z")
_env_key = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,10}\Z")
_seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)
_constraint = st.sampled_from(
    ["node.role==worker", "node.hostname!=db1", "node.labels.zone==a", "node.id==n1"]
)
_resources = st.fixed_dictionaries(
    {},
    optional={
        "cpus": st.floats(min_value=0, max_value=256, allow_nan=False) | st.integers(0, 64),
        "memory_bytes": st.integers(0, 2**40),
    },
)
_restart_policy = st.fixed_dictionaries(
    {},
    optional={
        "condition": st.sampled_from([c.value for c in RestartCondition]),
        "delay": _seconds,
        "max_attempts": st.integers(0, 10),
        "window": _seconds,
    },
)
# The flat form of command format 1 (what older journals and backups hold)...
flat_spec_dicts = st.fixed_dictionaries(
    {
        "name": _name,
        "image": _text.filter(str.strip),
    },
    optional={
        "mode": st.sampled_from([m.value for m in ServiceMode]),
        "replicas": st.integers(0, 1000),
        "args": st.lists(_text, max_size=4),
        "env": st.dictionaries(_env_key, _text, max_size=3),
        "labels": st.dictionaries(_label_key, _text, max_size=3),
        "constraints": st.lists(_constraint, max_size=3),
        "reservations": _resources,
        "limits": _resources,
        "restart_policy": _restart_policy,
        "max_replicas_per_node": st.integers(0, 5),
    },
)
# ...and the same specs as they are written since.
spec_dicts = flat_spec_dicts.map(flat_spec.nest)
status_dicts = st.fixed_dictionaries(
    {},
    optional={
        "state": st.sampled_from([s.value for s in TaskState]),
        "message": _text,
        "err": _text,
        "exit_code": st.none() | st.integers(-255, 255),
        "container_id": _text,
        "timestamp": _seconds,
    },
)
task_dicts = st.fixed_dictionaries(
    {
        "id": _name,
        "service_id": _name,
        "service_name": _name,
        "spec": spec_dicts,
        "spec_version": st.integers(1, 100),
    },
    optional={
        "slot": st.integers(0, 100),
        "node_id": _text,
        "desired_state": st.sampled_from(sorted(s.value for s in DESIRED_STATES)),
        "status": status_dicts,
        "version": st.integers(0, 2**40),
    },
)


def _assert_matches(encoded: Any, given_data: Any) -> None:
    """Every field that was given comes back out with the same value."""
    if isinstance(given_data, dict):
        for key, value in given_data.items():
            _assert_matches(encoded[key], value)
    else:
        assert encoded == given_data


@given(spec_dicts)
def test_random_specs_round_trip(data: dict[str, Any]) -> None:
    spec = from_dict(ServiceSpec, data)
    encoded = to_dict(spec)
    _assert_matches(encoded, data)
    assert from_dict(ServiceSpec, encoded) == spec
    assert _json_round_trip(spec) == spec


@given(task_dicts)
def test_random_tasks_round_trip(data: dict[str, Any]) -> None:
    task = from_dict(Task, data)
    encoded = to_dict(task)
    _assert_matches(encoded, data)
    assert _json_round_trip(task) == task


@given(
    spec_dicts,
    st.sampled_from(
        ["replicas", "container.args", "container.env", "resources.reservations", "mode"]
    ),
)
def test_random_specs_refuse_a_bool_anywhere(data: dict[str, Any], path: str) -> None:
    *groups, name = path.split(".")
    target = data = copy.deepcopy(data)
    for group in groups:
        target = target.setdefault(group, {})
    target[name] = True
    with pytest.raises(InvalidArgument, match=rf"^servicespec\.{re.escape(path)}\b"):
        from_dict(ServiceSpec, data)
