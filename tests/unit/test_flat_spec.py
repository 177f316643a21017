"""The flat ServiceSpec of command format 1 still loads everywhere, and a
format-1 cluster is still written the flat way (see warren.core.flat_spec).

The files in tests/fixtures/format1 were made by the version before the
nested spec (their make.py says how): they are what a user's data dir and
backups hold."""

from __future__ import annotations

import asyncio
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
from factories import make_node
from hypothesis import given
from test_codec import _assert_matches, flat_spec_dicts

from warren.core import flat_spec
from warren.core.codec import from_dict, to_dict
from warren.core.errors import InvalidArgument, Unavailable
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
from warren.manager import raft
from warren.manager.backup import state_objects
from warren.manager.command_format import CommandEncoder
from warren.manager.kinds import Kind
from warren.manager.store import MUST_NOT_EXIST, Store, barrier, put, raise_for_result, txn
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


async def _ready(consensus: raft.RaftConsensus) -> None:
    for _ in range(200):
        try:
            await consensus.propose(barrier())
            return
        except Unavailable:
            await asyncio.sleep(0.05)
    raise AssertionError("the single manager never elected itself")


async def test_a_format_1_raft_snapshot_and_journal_load_as_nested_specs(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "raft"
    shutil.copytree(FIXTURES / "raft", data_dir)
    # The snapshot (pickled objects) and the journal (JSON) both hold flat specs.
    assert b'"restart_policy"' in (data_dir / "journal").read_bytes()
    consensus = raft.RaftConsensus(Store(), "127.0.0.1:47911", data_dir, compaction_entries=50)
    await consensus.start()
    try:
        await _ready(consensus)
        store = consensus.store
        assert len(store.list(Kind.SERVICE)) == 41 and len(store.list(Kind.TASK)) == 40
        s00 = store.get(Kind.SERVICE, "s00")
        assert s00.spec == ServiceSpec(**{**FULL.__dict__, "replicas": 4})  # journal
        assert store.get(Kind.TASK, "s00-t1").spec == FULL  # snapshot
        s01 = store.get(Kind.SERVICE, "s01")
        assert s01.spec == ServiceSpec(name="s01", container=ContainerSpec(image="busybox"))
        late = store.get(Kind.SERVICE, "late").spec
        assert late.container.image == "busybox:late" and late.replicas == 2
        # Still a format-1 cluster (no cluster object says otherwise): a new write
        # goes into the journal flat, and reads back the same.
        assert store.cluster() is None
        updated = Service("s01", ServiceSpec(name="s01", container=ContainerSpec(image="b:2")))
        await consensus.propose(txn([put(updated, s01.version)], at=1.0))
        state_hash = store.state_hash()
    finally:
        await consensus.stop()
    restarted = raft.RaftConsensus(Store(), "127.0.0.1:47911", data_dir, compaction_entries=50)
    await restarted.start()
    try:
        await _ready(restarted)
        assert restarted.store.get(Kind.SERVICE, "s01").spec.container.image == "b:2"
        assert restarted.store.state_hash() == state_hash
    finally:
        await restarted.stop()


def _flat_pickle(spec: ServiceSpec) -> bytes:
    """``spec`` pickled as the flat class of format 1 was: the same class name,
    with the flat fields (model objects, as the snapshot holds them) as its state."""
    state: dict[str, Any] = {
        "name": spec.name,
        "mode": spec.mode,
        "replicas": spec.replicas,
        "labels": spec.labels,
        "restart_policy": spec.restart,
    }
    for group, keys in flat_spec.GROUPS.items():
        state.update({key: getattr(getattr(spec, group), key) for key in keys})

    flat = object.__new__(ServiceSpec)  # no __init__: nothing checks the old fields
    flat.__dict__.update(state)
    return pickle.dumps(flat)


def test_a_flat_spec_unpickled_from_an_old_snapshot_is_nested() -> None:
    loaded = pickle.loads(_flat_pickle(FULL))
    assert loaded == FULL
    assert pickle.loads(pickle.dumps(FULL)) == FULL


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
