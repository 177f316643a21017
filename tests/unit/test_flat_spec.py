"""The flat ServiceSpec of command format 1 still loads everywhere, and a
format-1 cluster is still written the flat way (see warren.core.flat_spec).

The files in tests/fixtures/format1 were made by the version before the
nested spec (their make.py says how): they are what a user's data dir and
backups hold. Its backups still restore; its data dir (a PySyncObj journal and
snapshot) is refused with the way over: a backup, then a restore."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from factories import make_node
from hypothesis import given
from test_codec import _assert_matches, flat_spec_dicts

from warren.core import flat_spec
from warren.core.codec import from_dict, to_dict
from warren.core.errors import FailedPrecondition, InvalidArgument
from warren.core.models import (
    Cluster,
    ContainerSpec,
    HealthCheck,
    NetworkMode,
    NodeRole,
    Placement,
    ResourceRequirements,
    Resources,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceSpec,
)
from warren.manager.backup import state_objects
from warren.manager.command_format import CommandEncoder
from warren.manager.etcd.setup import UPGRADE_GUIDE
from warren.manager.kinds import Kind
from warren.manager.manager import Manager, ManagerCredentials
from warren.manager.store import MUST_NOT_EXIST, Store, put, raise_for_result, txn
from warren.node.options import ManagerOptions
from warren.security.backup_file import decrypt_backup

FIXTURES = Path(__file__).parent.parent / "fixtures" / "format1"

# The service "full" of the fixtures, as it reads today.
FULL = ServiceSpec(
    name="full",
    container=ContainerSpec(
        image="registry.local/app:1.2",
        args=("serve", "--port", "80"),
        env={"A": "1", "B": "two"},
        entrypoint=("/bin/app",),
        workdir="/srv",
        user="1000:1000",
        read_only=True,
        init=True,
        network_mode=NetworkMode.HOST,
        stop_signal="SIGINT",
        stop_grace_period=3.0,
        health=HealthCheck(
            http="80/healthz", interval=5.0, timeout=2.0, retries=2, start_period=1.0
        ),
    ),
    replicas=3,
    labels={"team": "ops"},
    resources=ResourceRequirements(
        reservations=Resources(0.5, 64 * 2**20), limits=Resources(1.0, 128 * 2**20)
    ),
    placement=Placement(
        constraints=("node.role==worker", "node.labels.zone!=b"), max_replicas_per_node=2
    ),
    restart=RestartPolicy(RestartCondition.ON_FAILURE, 2.0, 5, 60.0),
)


def test_a_format_1_backup_restores_nested_specs() -> None:
    backup = decrypt_backup((FIXTURES / "backup.wbk").read_bytes(), "format-one")
    objects = state_objects(backup.state)
    services = {s.spec.name: s.spec for s in objects[Kind.SERVICE]}
    assert services == {
        "full": FULL,
        "plain": ServiceSpec(name="plain", container=ContainerSpec(image="busybox")),
    }
    (task,) = objects[Kind.TASK]
    assert task.spec == FULL


def _files(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under ``root``: its mode and, for a file, its bytes."""
    return {
        str(path.relative_to(root)): (
            path.stat().st_mode,
            path.read_bytes() if path.is_file() else b"",
        )
        for path in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("how", ["resume", "join"])
async def test_a_format_1_pysyncobj_data_dir_is_refused_untouched(tmp_path: Path, how: str) -> None:
    # A manager's data dir of the version that made the fixtures: its PySyncObj
    # journal and snapshot (which hold flat specs), its peers, and for a manager
    # that ran, its state.
    data_dir = tmp_path / "data"
    shutil.copytree(FIXTURES / "raft", data_dir / "raft")
    (data_dir / "raft-peers.json").write_text(json.dumps(["127.0.0.1:47911"]))
    joins: list[str] = []

    async def join() -> ManagerCredentials:
        joins.append("join")
        raise AssertionError("a refused data dir joins nothing")

    if how == "resume":
        (data_dir / "manager.json").write_text(json.dumps({"node_id": "n1", "cluster_id": "c1"}))
    options = ManagerOptions(
        data_dir=data_dir,
        listen_addr="127.0.0.1",
        advertise_addr="127.0.0.1",
        raft_port=47911,
        config_dir=tmp_path / "config",
    )
    before = _files(data_dir)
    manager = Manager(options, join=join if how == "join" else None)
    with pytest.raises(FailedPrecondition) as refused:
        await manager.start()
    message = str(refused.value)
    assert message.startswith(f"{data_dir} holds a manager of an older Warren")
    assert "PySyncObj" in message and UPGRADE_GUIDE in message
    assert "'warren cluster backup'" in message and "'warren cluster restore'" in message
    assert "\n" not in message
    # Nothing changed, nothing was added (no etcd member), nothing joined.
    assert _files(data_dir) == before
    assert not (data_dir / "etcd").exists() and not options.config_dir.exists()
    assert joins == []


@given(flat_spec_dicts)
def test_a_flat_spec_reads_as_its_nested_form_and_flattens_back(data: dict[str, Any]) -> None:
    spec = from_dict(ServiceSpec, data)
    assert spec == from_dict(ServiceSpec, flat_spec.nest(data))
    flat = flat_spec.flatten(to_dict(spec))
    _assert_matches(flat, data)  # every flat field given comes back, at the top
    assert from_dict(ServiceSpec, flat) == spec


def test_mixing_the_flat_and_nested_forms_is_refused_with_a_hint() -> None:
    with pytest.raises(InvalidArgument) as refused:
        from_dict(ServiceSpec, {"name": "w", "container": {"image": "x"}, "env": {}}, "spec")
    assert str(refused.value) == (
        "spec: 'env' is the flat form of older versions and 'container' the nested one: "
        "use one (e.g. 'container.env')"
    )


def _format_1_stores() -> tuple[Store, Store]:
    """The same format-1 cluster as code reading only format 1 and as this code."""
    old, new = Store(max_format=1), Store(max_format=2)
    cluster = Cluster(id="c", ca_fingerprint="f", command_format=1)
    managers = [make_node(n, hostname=n, role=NodeRole.MANAGER) for n in ("m1", "m2")]
    # Encoded for format 1 (the store holds no cluster yet), as any write is.
    seed = CommandEncoder(new).encode(
        txn([put(o, MUST_NOT_EXIST) for o in (cluster, *managers)], at=1.0)
    )
    for store in (old, new):
        raise_for_result(store.apply(seed))
    return old, new


def test_a_format_1_cluster_gets_flat_specs_that_an_older_manager_applies() -> None:
    old, new = _format_1_stores()
    command = txn([put(Service("s1", FULL), MUST_NOT_EXIST)], at=2.0)
    # As this code builds it, the spec is nested, which a format-1 manager refuses...
    assert "unknown field" in old.apply(command)["message"]
    # ...so the encoder writes it flat for a format-1 cluster.
    encoded = CommandEncoder(new).encode(command)
    spec = encoded["ops"][0]["object"]["spec"]
    assert "image" in spec and "container" not in spec and "restart_policy" in spec
    for store in (old, new):
        raise_for_result(store.apply(encoded))
    assert old.get(Kind.SERVICE, "s1").spec == new.get(Kind.SERVICE, "s1").spec == FULL
    assert old.state_hash() == new.state_hash()


def test_a_format_2_cluster_gets_nested_specs() -> None:
    store = Store()
    raise_for_result(
        store.apply(
            txn(
                [put(Cluster(id="c", ca_fingerprint="f", command_format=2), MUST_NOT_EXIST)], at=1.0
            )
        )
    )
    command = txn([put(Service("s1", FULL), MUST_NOT_EXIST)], at=2.0)
    assert CommandEncoder(store).encode(command) == command
