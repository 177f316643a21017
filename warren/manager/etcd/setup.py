"""Building a manager's consensus: its etcd member (certificates from the
cluster CA, data under the manager's data dir) and the log over it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from warren.core.errors import FailedPrecondition
from warren.manager.etcd.consensus import EtcdConsensus
from warren.manager.etcd.member import EtcdMember, MemberConfig
from warren.manager.store import Store
from warren.security.ca import CertificateAuthority, generate_key, key_pem
from warren.security.etcd_peer import issue_etcd_peer_certificate

# The guide an older data dir is pointed to.
UPGRADE_GUIDE = "docs/operations.md#upgrading-from-pysyncobj"


class ConsensusSettings(Protocol):
    data_dir: Path
    listen_addr: str
    raft_port: int

    @property
    def raft_address(self) -> str: ...


def refuse_pysyncobj_data(data_dir: Path) -> None:
    """A manager of a Warren that kept its log in PySyncObj cannot be resumed:
    its state moves over through a backup (taken with that version)."""
    if (data_dir / "raft").is_dir() and not (data_dir / "etcd").exists():
        raise FailedPrecondition(
            f"{data_dir} holds a manager of an older Warren that kept its log in PySyncObj; "
            "take a backup with that version ('warren cluster backup'), then "
            f"'warren cluster restore' it into a new data dir with this one (see {UPGRADE_GUIDE})"
        )


def new_consensus(
    store: Store,
    options: ConsensusSettings,
    ca: CertificateAuthority,
    members: list[str],
    *,
    new_member: bool,
    node_id: str,
    on_fatal: Callable[[str], None],
) -> EtcdConsensus:
    """``members``: the Raft addresses of the cluster's etcd members, this one
    included (they matter only when ``new_member``: later starts resume from
    the member's own data)."""
    key = generate_key()
    certificate = issue_etcd_peer_certificate(ca, key, options.raft_address.rpartition(":")[0])
    config = MemberConfig(
        name=options.raft_address,
        data_dir=options.data_dir / "etcd",
        peer_address=options.raft_address,
        listen_peer=f"{options.listen_addr}:{options.raft_port}",
        initial_cluster={address: address for address in members},
        initial_state="new" if new_member and members == [options.raft_address] else "existing",
        # Only a new cluster's first member uses it: a restored cluster gets
        # its own, so the old cluster's members can never talk to it.
        cluster_token=f"warren-{ca.cluster_id}-{node_id}",
        ca_pem=ca.cert_pem,
        cert_pem=certificate,
        key_pem=key_pem(key),
    )
    member = EtcdMember(config, on_fatal=on_fatal)
    return EtcdConsensus(store, options.raft_address, member)
