"""The join design end to end over a real gRPC port that requires client certs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from impostor import impostor_server, legacy_leaf, new_identity

from warren.agent.agent import manager_channel
from warren.cli.client import WarrenClient
from warren.core.errors import InvalidArgument, PermissionDenied, Unavailable
from warren.node.join import JoinRequest, _join_with, request_join, request_promotion
from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.security.ca import CertificateAuthority, generate_key, key_pem, make_csr
from warren.security.join import join_root_cert, joiner_credentials
from warren.security.tls import (
    IdentityFiles,
    check_manager_leaf,
    fetch_ca_chain,
    identity_from_pem,
    pin_ca,
    verified_manager_host,
)
from warren.security.tokens import JoinToken, new_secret

METHOD = "/warren.test.Probe/Whoami"


async def _whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    pem = context.auth_context()["x509_pem_cert"][0]
    peer = identity_from_pem(pem)
    return f"{peer.node_id}|{peer.role}|{peer.joining_role or ''}".encode()


def _server_config(
    server_key: bytes, server_cert: bytes, ca_pem: bytes, secret: str
) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(server_key, server_cert + ca_pem)],
        root_certificates=ca_pem + join_root_cert(secret, "worker"),
    )


async def _call(port: int, ca_pem: bytes, creds: tuple[bytes, bytes] | None) -> str:
    if creds is None:
        channel_creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    else:
        key, cert = creds
        channel_creds = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=key, certificate_chain=cert
        )
    # A private subchannel pool makes every call a fresh TLS handshake.
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_creds, options) as channel:
        whoami: Callable[..., grpc.aio.UnaryUnaryCall] = channel.unary_unary(METHOD)
        reply: bytes = await whoami(b"", timeout=5)
        return reply.decode()


async def _refused(port: int, ca_pem: bytes, creds: tuple[bytes, bytes] | None) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(port, ca_pem, creds)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_join_over_mutual_tls_port() -> None:
    ca = CertificateAuthority.create("cluster-1")
    server_key = generate_key()
    server_cert = ca.issue_for_key(server_key.public_key(), "mgr1", "manager", ["127.0.0.1"])
    server_key_pem = key_pem(server_key)
    old_secret, new_secret_ = new_secret(), new_secret()
    current = {"config": _server_config(server_key_pem, server_cert, ca.cert_pem, old_secret)}

    def fetcher() -> grpc.ServerCertificateConfiguration:
        return current["config"]

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "warren.test.Probe", {"Whoami": grpc.unary_unary_rpc_method_handler(_whoami)}
    )
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.dynamic_ssl_server_credentials(
        current["config"], fetcher, require_client_authentication=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        # (a) the joiner pins the CA from the chain the server presents.
        chain = await asyncio.to_thread(fetch_ca_chain, "127.0.0.1", port)
        ca_pem = pin_ca(chain, ca.fingerprint)
        assert ca_pem == ca.cert_pem

        # (b) a joiner holding the current secret gets in, recognised as a joiner.
        old_joiner = joiner_credentials(old_secret, "worker")
        assert await _call(port, ca_pem, old_joiner) == "||worker"

        # (c) after rotation the old secret's leaves fail; the new secret's work.
        current["config"] = _server_config(server_key_pem, server_cert, ca.cert_pem, new_secret_)
        await _refused(port, ca_pem, old_joiner)
        await _refused(port, ca_pem, joiner_credentials(old_secret, "worker"))
        assert await _call(port, ca_pem, joiner_credentials(new_secret_, "worker")) == "||worker"
        # The same secret under another role derives another root: refused.
        await _refused(port, ca_pem, joiner_credentials(new_secret_, "manager"))

        # (d) no client certificate at all.
        await _refused(port, ca_pem, None)

        # (e) a node certificate issued by the CA.
        node_key = generate_key()
        node_cert = ca.issue(make_csr(node_key), "node-7", "worker")
        assert await _call(port, ca_pem, (key_pem(node_key), node_cert)) == "node-7|worker|"
    finally:
        await server.stop(None)


# -- only a manager of this cluster, at the address dialled, is a server ----------------


@pytest.fixture(scope="module")
def cluster_ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster-1")


@pytest.fixture
def admin_identity(tmp_path: Path, cluster_ca: CertificateAuthority) -> IdentityFiles:
    identity = IdentityFiles(tmp_path / "admin")
    key, cert = new_identity(cluster_ca, "admin", "admin")
    identity.save(cluster_ca.cert_pem, cert, key)
    return identity


def _server_identities(ca: CertificateAuthority) -> dict[str, tuple[bytes, bytes]]:
    """Every certificate that is not a manager's of ``ca`` for 127.0.0.1."""
    legacy_key = key_pem(generate_key())
    # Same cluster ID, another CA: only the signature tells them apart.
    stranger = CertificateAuthority.create(ca.cluster_id)
    return {
        "worker": new_identity(ca, "w1", "worker"),
        "admin": new_identity(ca, "a1", "admin"),
        "legacy worker": (legacy_key, legacy_leaf(ca, "w1", "worker", legacy_key)),
        "manager elsewhere": new_identity(ca, "m2", "manager", ["10.0.0.5"]),
        "other cluster's manager": new_identity(stranger, "m1", "manager", ["127.0.0.1"]),
    }


def test_the_cli_client_talks_to_a_manager_of_its_cluster(
    cluster_ca: CertificateAuthority, admin_identity: IdentityFiles
) -> None:
    key, cert = new_identity(cluster_ca, "m1", "manager", ["127.0.0.1"])
    with impostor_server(cluster_ca.cert_pem, key, cert) as manager:
        with WarrenClient([manager.address], admin_identity, timeout=5) as client:
            assert client.list_services() == []
        assert manager.calls == ["/warren.v1.Control/ListServices"]


@pytest.mark.parametrize(
    "server", ["worker", "admin", "legacy worker", "manager elsewhere", "other cluster's manager"]
)
def test_the_cli_client_refuses_any_other_server(
    cluster_ca: CertificateAuthority, admin_identity: IdentityFiles, server: str
) -> None:
    """`warren service ls` against a server holding a worker's certificate (or
    any certificate but a manager's of this cluster naming 127.0.0.1)."""
    key, cert = _server_identities(cluster_ca)[server]
    with impostor_server(cluster_ca.cert_pem, key, cert) as impostor:
        with (
            WarrenClient([impostor.address], admin_identity, timeout=5) as client,
            pytest.raises(Unavailable),
        ):
            client.list_services()
        assert impostor.calls == []


@pytest.mark.parametrize("server", ["worker", "legacy worker", "other cluster's manager"])
async def test_the_agent_and_role_watch_refuse_a_server_that_is_no_manager(
    cluster_ca: CertificateAuthority, tmp_path: Path, server: str
) -> None:
    identity = IdentityFiles(tmp_path / "node")
    key, cert = new_identity(cluster_ca, "w2", "worker")
    identity.save(cluster_ca.cert_pem, cert, key)
    server_key, server_cert = _server_identities(cluster_ca)[server]
    with impostor_server(cluster_ca.cert_pem, server_key, server_cert) as impostor:
        # The channel Agent._session and RoleKeeper._watch open.
        async with manager_channel(identity, impostor.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.DispatcherStub(channel).Promote(pb.PromoteRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(Unavailable):
            await request_promotion(identity, [impostor.address], "127.0.0.1:1", "127.0.0.1:2")
        assert impostor.calls == []


@pytest.mark.parametrize("server", ["worker", "legacy worker", "manager elsewhere"])
async def test_a_joining_manager_sends_its_token_to_no_impostor(
    cluster_ca: CertificateAuthority, server: str
) -> None:
    key, cert = _server_identities(cluster_ca)[server]
    token = JoinToken(cluster_ca.fingerprint, new_secret()).format()
    join = JoinRequest(token, [], "manager", "m9", api_address="127.0.0.1:1")
    with impostor_server(cluster_ca.cert_pem, key, cert) as impostor:
        with pytest.raises(PermissionDenied, match="not a manager of this cluster"):
            await request_join(replace(join, managers=[impostor.address]))
        # Past the explicit check (a race, or a client without it), the TLS layer refuses too.
        with pytest.raises(Unavailable):
            await _join_with(impostor.address, cluster_ca.cert_pem, new_secret(), join)
        assert impostor.calls == []


def test_check_manager_leaf(cluster_ca: CertificateAuthority) -> None:
    def chain(cert: bytes) -> list[bytes]:
        return [x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)]

    _, manager = new_identity(cluster_ca, "m1", "manager", ["127.0.0.1"])
    check_manager_leaf(chain(manager), cluster_ca.cert_pem, "127.0.0.1")
    for host in ("10.0.0.5", "localhost"):
        with pytest.raises(PermissionDenied):
            check_manager_leaf(chain(manager), cluster_ca.cert_pem, host)
    for key_cert in _server_identities(cluster_ca).values():
        with pytest.raises(PermissionDenied):
            check_manager_leaf(chain(key_cert[1]), cluster_ca.cert_pem, "127.0.0.1")
    with pytest.raises(PermissionDenied):
        check_manager_leaf([], cluster_ca.cert_pem, "127.0.0.1")


async def test_a_manager_certificate_names_only_an_address_the_request_came_from() -> None:
    assert await verified_manager_host("127.0.0.1:2377", "127.0.0.1") == "127.0.0.1"
    assert await verified_manager_host("127.0.0.1:2377", "::ffff:127.0.0.1") == "127.0.0.1"
    assert await verified_manager_host("[::1]:2377", "::1") == "::1"
    assert await verified_manager_host("localhost:2377", "127.0.0.1") == "localhost"
    with pytest.raises(PermissionDenied, match="not the address this request came from"):
        await verified_manager_host("10.9.9.9:2377", "127.0.0.1")
    with pytest.raises(PermissionDenied, match="cannot tell"):
        await verified_manager_host("127.0.0.1:2377", "")
    with pytest.raises(InvalidArgument):
        await verified_manager_host(":2377", "127.0.0.1")
