"""The certificate a manager's etcd member serves and dials with, from the cluster CA.

One certificate per member does every job: etcd presents it to its peers and
to its clients, dials its peers with it, and the manager's own etcd client
presents it on the member's loopback client port. etcd admits on the peer port
only this common name (``--peer-cert-allowed-cn``) and on the client port only
this DNS name (``--client-cert-allowed-hostname``), so a worker, manager or
admin certificate from the same CA opens neither.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from warren.security.ca import ETCD_PEER_COMMON_NAME, CertificateAuthority

__all__ = ["ETCD_PEER_COMMON_NAME", "issue_etcd_peer_certificate"]


def issue_etcd_peer_certificate(
    ca: CertificateAuthority, key: ec.EllipticCurvePrivateKey, advertise_host: str
) -> bytes:
    """A PEM certificate for ``key``: serverAuth and clientAuth, naming
    ``advertise_host`` (an IP address or a DNS name, brackets allowed) and
    127.0.0.1."""
    return ca.issue_etcd_peer(key.public_key(), advertise_host)
