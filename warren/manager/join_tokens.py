"""The cluster's join tokens: issued, checked, shown, rotated and migrated.

The cluster object keeps each token's secret twice, neither in plain text: as
a hash, which checks a joiner's secret, and sealed under a key derived from the
CA key, which shows the token again and gives the manager the join root a
joiner's throwaway certificate must chain to. Clusters written before kept the
secrets in plain text; those still work until the leader seals them
(``sealed_legacy``), at its start or at the next write of the cluster object.
"""

from __future__ import annotations

from dataclasses import replace

from warren.core.errors import InvalidArgument
from warren.core.models import Cluster, NodeRole
from warren.security.ca import CertificateAuthority
from warren.security.tokens import (
    hash_secret,
    new_secret,
    seal_secret,
    sealing_key,
    secret_matches,
    secrets_equal,
    unseal_secret,
)

ROLES = (NodeRole.WORKER, NodeRole.MANAGER)


def check_role(role: str) -> NodeRole:
    if role not in ROLES:
        raise InvalidArgument("join token role must be worker or manager")
    return NodeRole(role)


def _context(cluster_id: str, role: NodeRole) -> str:
    return f"{cluster_id}/{role}"


def _legacy_secret(cluster: Cluster, role: NodeRole) -> str:
    if role == NodeRole.WORKER:
        return cluster.worker_token_secret
    return cluster.manager_token_secret


def _hash(cluster: Cluster, role: NodeRole) -> str:
    return cluster.worker_token_hash if role == NodeRole.WORKER else cluster.manager_token_hash


def _sealed(cluster: Cluster, role: NodeRole) -> str:
    return cluster.worker_token_sealed if role == NodeRole.WORKER else cluster.manager_token_sealed


def with_secret(cluster: Cluster, role: str, secret: str, ca: CertificateAuthority) -> Cluster:
    """``cluster`` with ``secret`` as the token secret of ``role``: hashed and sealed."""
    checked = check_role(role)
    secret_hash = hash_secret(secret)
    sealed = seal_secret(secret, sealing_key(ca), _context(cluster.id, checked))
    if checked == NodeRole.WORKER:
        return replace(
            cluster,
            worker_token_hash=secret_hash,
            worker_token_sealed=sealed,
            worker_token_secret="",
        )
    return replace(
        cluster,
        manager_token_hash=secret_hash,
        manager_token_sealed=sealed,
        manager_token_secret="",
    )


def new_cluster(ca: CertificateAuthority, created_at: float) -> Cluster:
    """The cluster object of a new cluster, with fresh token secrets."""
    cluster = Cluster(id=ca.cluster_id, ca_fingerprint=ca.fingerprint, created_at=created_at)
    for role in ROLES:
        cluster = with_secret(cluster, role, new_secret(), ca)
    return cluster


def rotated(cluster: Cluster, role: str, ca: CertificateAuthority) -> Cluster:
    """A new secret for ``role``; a plain-text secret of the other role is sealed too."""
    return sealed_legacy(with_secret(cluster, role, new_secret(), ca), ca)


def has_plaintext(cluster: Cluster) -> bool:
    """Whether ``cluster`` holds a plain-text secret (written by an older version)."""
    return any(_legacy_secret(cluster, role) for role in ROLES)


def sealed_legacy(cluster: Cluster, ca: CertificateAuthority) -> Cluster:
    """``cluster`` with each plain-text secret replaced by its hash and sealed
    form: the same tokens keep working."""
    for role in ROLES:
        legacy = _legacy_secret(cluster, role)
        if legacy:
            cluster = with_secret(cluster, role, legacy, ca)
    return cluster


def token_secret(cluster: Cluster, role: str, ca: CertificateAuthority) -> str:
    """The secret of ``role``'s token, to show it or to derive its join root."""
    checked = check_role(role)
    legacy = _legacy_secret(cluster, checked)
    if legacy:
        return legacy
    return unseal_secret(_sealed(cluster, checked), sealing_key(ca), _context(cluster.id, checked))


def secret_accepted(cluster: Cluster, role: str, secret: str) -> bool:
    """Whether ``secret`` is the current secret of ``role``'s token."""
    checked = check_role(role)
    legacy = _legacy_secret(cluster, checked)
    if legacy:
        return secrets_equal(secret, legacy)
    secret_hash = _hash(cluster, checked)
    return bool(secret_hash) and secret_matches(secret, secret_hash)


def verification_key(cluster: Cluster) -> tuple[str, ...]:
    """Changes exactly when a token's secret does (the hashes, or legacy plain text)."""
    return tuple(_hash(cluster, r) or hash_secret(_legacy_secret(cluster, r)) for r in ROLES)
