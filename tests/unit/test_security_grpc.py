"""The join design end to end over a real gRPC port that requires client certs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from warren.security.ca import CertificateAuthority, generate_key, key_pem, make_csr
from warren.security.join import join_root_cert, joiner_credentials
from warren.security.tls import fetch_ca_chain, identity_from_pem, pin_ca
from warren.security.tokens import new_secret

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
