"""Cluster backups: capturing a consistent copy of the state, and restoring one.

Taking a backup (a manager, for the ``Backup`` RPC): a barrier write first, so
the copy holds every write acknowledged before the call, then one point-in-time
read of the store. The file format and its encryption are
``warren.security.backup_file`` (the CLI writes and reads the files).

Restoring prepares an empty data dir so that the normal manager start-up
resumes it: the same CA (worker certificates and join tokens stay valid), a new
manager identity, and an etcd member whose log's first writes hold the cluster, the
services and the workers (down until they reconnect). Tasks are not restored:
the orchestrator creates them afresh, and a worker that reconnects stops what it
ran before. The old managers are left out; the new cluster has one manager.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warren.core.codec import from_dict, to_dict
from warren.core.errors import Conflict, FailedPrecondition, InvalidArgument
from warren.core.models import Node, NodeRole, NodeStatus, new_id
from warren.manager import join_tokens
from warren.manager.consensus import Consensus
from warren.manager.kinds import Kind, kind_of_table, spec_of
from warren.manager.kinds.node import RESTORED_MESSAGE as RESTORED_MESSAGE
from warren.manager.store import MUST_NOT_EXIST, Store, barrier, put, raise_for_result, txn
from warren.security.backup_file import Backup, BackupState
from warren.security.backup_file import encode_state as encode_state  # for the gRPC API
from warren.security.ca import CertificateAuthority, generate_key, key_pem
from warren.security.tls import write_private

if TYPE_CHECKING:
    from warren.manager.manager import ManagerSettings

log = logging.getLogger(__name__)

# Reads of the store retried while the cluster object changes under them.
_CAPTURE_ATTEMPTS = 5


# -- the state ---------------------------------------------------------------------


def capture_state(store: Store) -> BackupState:
    """One point-in-time copy of the store: the cluster object, and a table of
    every kind a backup keeps (see ``KindSpec.backup``), sorted by ID."""
    for _ in range(_CAPTURE_ATTEMPTS):
        revision, tables = store.tables()
        cluster = store.cluster()
        if cluster is None:
            raise FailedPrecondition("the cluster is not initialised yet")
        # A cluster written after the tables were read would carry a later version.
        if cluster.version <= revision:
            return BackupState(revision=revision, cluster=cluster, tables=_backup_tables(tables))
    raise Conflict("the cluster kept changing during the backup; try again")


def _backup_tables(tables: dict[Kind, list[Any]]) -> dict[str, tuple[dict[str, Any], ...]]:
    out: dict[str, tuple[dict[str, Any], ...]] = {}
    for kind, objects in tables.items():
        rule = spec_of(kind).backup
        # An empty table is left out: absent reads as empty, and a version
        # that predates the kind can still restore the backup.
        if rule is not None and objects:
            out[rule.table] = tuple(to_dict(o) for o in sorted(objects, key=lambda o: o.id))
    return out


def state_objects(state: BackupState) -> dict[Kind, tuple[Any, ...]]:
    """Every object of the backup's tables, decoded strictly by its kind, in the
    order kinds are registered; ``InvalidArgument`` for anything this manager
    cannot read."""
    decoded: dict[Kind, tuple[Any, ...]] = {}
    for table, objects in state.tables.items():
        kind = kind_of_table(table)
        if kind is None:
            raise InvalidArgument(
                f"invalid backup state: it holds {table!r}, which this warren does not know "
                "(restore it with the version that took it, or a later one)"
            )
        model = spec_of(kind).model
        try:
            decoded[kind] = tuple(
                from_dict(model, raw, f"{table}[{i}]") for i, raw in enumerate(objects)
            )
        except InvalidArgument as exc:
            raise InvalidArgument(f"invalid backup state: {exc}") from None
    return {kind: decoded[kind] for kind in Kind if kind in decoded}


async def take_backup(consensus: Consensus, ca: CertificateAuthority) -> Backup:
    """A backup holding every write acknowledged before the call."""
    await consensus.propose(barrier())
    state = capture_state(consensus.store)
    return Backup(state, ca.cert_pem, ca.key_pem)


# -- restore -----------------------------------------------------------------------


def check_restore_target(data_dir: Path) -> None:
    """A restore only goes into a data dir that does not exist or is empty."""
    if not data_dir.exists():
        return
    if not data_dir.is_dir():
        raise FailedPrecondition(f"{data_dir} is not a directory")
    if any(data_dir.iterdir()):
        raise FailedPrecondition(
            f"{data_dir} is not empty; restore into a new data dir "
            "(to restart an existing manager, run 'warren cluster init' with its data dir)"
        )


def restore_ops(state: BackupState, manager: Node) -> list[dict[str, Any]]:
    """What seeds a new cluster: the cluster and the new manager (the first two),
    then what each kind keeps of its objects (``BackupRule.restore``: for
    today's kinds, the workers, the services and the networks)."""
    now = manager.created_at
    ops = [put(replace(state.cluster, version=0), MUST_NOT_EXIST)]
    ops.append(put(manager, MUST_NOT_EXIST))
    for kind, objects in state_objects(state).items():
        rule = spec_of(kind).backup
        if rule is None or rule.restore is None:
            continue
        for obj in objects:
            restored = rule.restore(obj, now)
            if restored is not None:
                ops.append(put(replace(restored, version=0), MUST_NOT_EXIST))
    return ops


def _manager_node(options: ManagerSettings, node_id: str, now: float) -> Node:
    return Node(
        id=node_id,
        role=NodeRole.MANAGER,
        hostname=options.node_name,
        address=options.advertise_addr,
        labels=dict(options.labels),
        availability=options.availability,
        status=NodeStatus.UNKNOWN,
        api_address=options.api_address,
        raft_address=options.raft_address,
        created_at=now,
        updated_at=now,
    )


async def prepare_restore(options: ManagerSettings, backup: Backup) -> str:
    """Turn an empty data dir into a stopped manager of the backed-up cluster.

    Returns the new manager's node ID. On failure the data dir is left as empty
    as it was found.
    """
    from warren.manager.etcd.setup import new_consensus
    from warren.manager.manager import Manager, ManagerState

    ca = backup.authority()
    state_objects(backup.state)  # a state this manager cannot read is refused first
    data_dir = options.data_dir
    check_restore_target(data_dir)
    created = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        manager = Manager(options)
        node_id = new_id()
        key = generate_key()
        cert = ca.issue_for_key(key.public_key(), node_id, "manager", [options.advertise_addr])
        write_private(data_dir / "certs" / "ca-key.pem", ca.key_pem)
        manager.identity.save(ca.cert_pem, cert, key_pem(key))
        # The etcd member the manager's start-up resumes: a new cluster of one.
        manager.consensus = new_consensus(
            manager.store,
            options,
            ca,
            [options.raft_address],
            new_member=True,
            node_id=node_id,
            on_fatal=lambda reason: None,  # the restore fails on its own
        )
        await manager.consensus.start()
        try:
            await manager._wait_ready()
            now = time.time()
            # A backup of an older version holds plain-text secrets: never journal them.
            cluster = join_tokens.sealed_legacy(backup.state.cluster, ca)
            state = replace(backup.state, cluster=cluster)
            ops = restore_ops(state, _manager_node(options, node_id, now))
            # The cluster (with its command format) first: the objects are
            # encoded for the format the store has when they are proposed.
            for part in (ops[:2], ops[2:]):
                if part:
                    raise_for_result(await manager.consensus.propose(txn(part, at=now)))
        finally:
            await manager.consensus.stop()
        manager._write_admin_identity(ca)
        # Written last: from here on, start-up resumes this manager.
        ManagerState(node_id, ca.cluster_id).save(data_dir)
    except BaseException:
        _empty(data_dir, remove=created)
        raise
    return node_id


def _empty(data_dir: Path, remove: bool) -> None:
    """Undo a failed restore (best effort: the original error is what matters)."""
    with contextlib.suppress(OSError):
        if remove:
            shutil.rmtree(data_dir)
            return
        for entry in data_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
