"""Join tokens, certificates and API authorization against a real manager."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from harness import WARREN, Cluster
from impostor import impostor_server, legacy_leaf

from warren.core.models import ContainerSpec, ServiceSpec
from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.proto.convert import to_message
from warren.security.ca import CertificateAuthority, manager_server_name
from warren.security.tls import IdentityFiles, identity_from_pem
from warren.security.tokens import JoinToken, new_secret, parse

pytestmark = pytest.mark.integration


def try_join(c: Cluster, name: str, token: str) -> subprocess.CompletedProcess[str]:
    args = [*WARREN, "worker", "join", "--token", token, "--manager", c.manager_address,
            "--data-dir", str(c.root / name), "--runtime", "sim", "--node-name", name]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, env=c.env, timeout=30)


def test_rotated_and_forged_tokens_are_refused(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    old = c.join_token("worker")
    rotated = c.cli("cluster", "join-token", "worker", "--rotate", "-q").stdout.strip()
    assert rotated != old

    refused = try_join(c, "old", old)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    # Not gRPC's "Socket closed": what is wrong, and what to do.
    assert "invalid or expired join token" in refused.stderr
    assert "warren cluster join-token worker" in refused.stderr

    wrong_secret = JoinToken(parse(rotated).ca_fingerprint, new_secret()).format()
    forged = try_join(c, "forged", wrong_secret)
    assert forged.returncode != 0
    assert "invalid or expired join token" in forged.stderr

    other_ca = JoinToken("1" * 50, parse(rotated).secret).format()
    mitm = try_join(c, "mitm", other_ca)
    assert mitm.returncode != 0
    assert "does not match the join token" in mitm.stderr

    malformed = try_join(c, "junk", "WRN-1-nope")
    assert "invalid join token" in malformed.stderr

    # The manager token cannot join a worker either.
    wrong_role = try_join(c, "as-manager", c.join_token("manager"))
    assert wrong_role.returncode != 0
    assert "invalid or expired join token" in wrong_role.stderr
    assert {n["hostname"] for n in c.nodes()} == {"manager-1"}

    c.join_worker("good", token=rotated)
    assert c.node_status("good") == "ready"


def _channel(identity: IdentityFiles, address: str) -> grpc.Channel:
    ca, cert, key = identity.load()
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert))


def test_worker_certificate_cannot_create_a_service(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    c.join_worker("w1")
    worker_identity = IdentityFiles(c.root / "w1" / "certs")
    with _channel(worker_identity, c.manager_address) as channel:
        stub = pb_grpc.ControlStub(channel)
        spec = to_message(
            ServiceSpec(name="evil", container=ContainerSpec(image="busybox")), pb.ServiceSpec
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateService(pb.CreateServiceRequest(spec=spec), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as refused_read:
            stub.ListNodes(pb.Empty(), timeout=10)
        assert refused_read.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert c.json("service", "ls") == []


def test_no_client_certificate_is_refused(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    ca, _, _ = IdentityFiles(c.config_dir).load()
    with grpc.secure_channel(c.manager_address, grpc.ssl_channel_credentials(ca)) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.ControlStub(channel).ListServices(pb.Empty(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


class Rest:
    def __init__(self, c: Cluster) -> None:
        identity = IdentityFiles(c.config_dir)
        self.context = ssl.create_default_context(cafile=str(identity.ca_path))
        self.context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
        self.base = f"https://127.0.0.1:{c.ports['rest']}"

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as reply:
                raw = reply.read()
                return reply.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


def test_bad_input_is_refused_and_changes_nothing(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    rest = Rest(c)
    status, created = rest.call(
        "POST", "/v1/services", b'{"name": "web", "container": {"image": "busybox"}}'
    )
    assert status == 201
    state_before = rest.call("GET", "/v1/services")[1]

    bad_bodies = [
        b'{"name": "web", "container": {"image": "busybox"}}',  # duplicate name
        b'{"name": "neg", "container": {"image": "busybox"}, "replicas": -1}',
        b'{"name": "x", "container": {"image": "busybox"},',  # malformed JSON
        b'["not", "an", "object"]',
        b'{"name": "x", "container": {"image": "busybox"}, "replicas": "three"}',
        b'{"name": "x", "container": {"image": "busybox"}, "colour": "blue"}',
        b'{"name": "bad name!", "container": {"image": "busybox"}}',
        b'{"name": "x", "container": {"image": "busybox"},'
        b' "placement": {"constraints": ["node.os=linux"]}}',
    ]
    for body in bad_bodies:
        status, error = rest.call("POST", "/v1/services", body)
        assert 400 <= status < 500, (body, status, error)
        assert set(error["error"]) == {"code", "message"}
        assert "\n" not in error["error"]["message"]
    assert rest.call("POST", "/v1/services", bad_bodies[0])[0] == 409

    sid = created["id"]
    for body in (b'{"replicas": -3}', b'{"replicas": 1.5}', b"{}", b"nope"):
        status, _ = rest.call("POST", f"/v1/services/{sid}/scale", body)
        assert status == 400, body
    assert rest.call("GET", "/v1/services")[1] == state_before

    negative = c.cli("service", "scale", "web=-1", check=False)
    assert negative.returncode != 0 and "Traceback" not in negative.stderr
    duplicate = c.cli("service", "create", "web", "--image", "busybox", "--detach", check=False)
    assert duplicate.returncode == 1
    assert duplicate.stderr.strip() == "Error: service 'web' already exists"
    assert rest.call("GET", "/v1/services")[1] == state_before


def test_admin_files_are_private(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    for path in Path(c.config_dir).iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


def test_metrics_are_exposed(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    c.cli("service", "create", "web", "--image", "busybox", "--replicas", "2")
    url = f"http://127.0.0.1:{c.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    assert "warren_raft_is_leader 1.0" in text
    assert 'warren_tasks_total{state="running"} 2.0' in text
    assert "warren_services_total 1.0" in text
    assert 'warren_nodes_total{role="manager",status="ready"} 1.0' in text
    assert "warren_raft_last_log_index" in text
    assert "warren_api_request_duration_seconds_bucket" in text


def _names(pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n.value) for n in names}


def _usages(pem: bytes) -> set[x509.ObjectIdentifier]:
    cert = x509.load_pem_x509_certificate(pem)
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_a_worker_certificate_cannot_pose_as_a_manager(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    cluster_id = c.json("cluster", "info")["cluster_id"]
    # A worker's certificate names nothing (before, its node name, localhost and 127.0.0.1).
    c.join_worker("w1")
    ca, worker_cert, worker_key = IdentityFiles(c.root / "w1" / "certs").load()
    assert _usages(worker_cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _names(worker_cert) == set()
    _, admin_cert, _ = IdentityFiles(c.config_dir).load()
    assert _usages(admin_cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _names(admin_cert) == set()
    _, manager_cert, _ = IdentityFiles(c.root / "manager" / "certs").load()
    assert ExtendedKeyUsageOID.SERVER_AUTH in _usages(manager_cert)
    assert _names(manager_cert) == {"127.0.0.1", manager_server_name("127.0.0.1", cluster_id)}

    with impostor_server(ca, worker_key, worker_cert) as impostor:
        listed = c.cli("service", "ls", check=False, managers=impostor.address)
        assert listed.returncode != 0
        assert "Traceback" not in listed.stderr
        token = c.join_token("manager")
        args = [*WARREN, "manager", "join", "--token", token, "--manager", impostor.address,
                "--data-dir", str(c.root / "m2"), "--advertise-addr", "127.0.0.1",
                "--listen-addr", "127.0.0.1", "--runtime", "sim"]  # fmt: skip
        joined = subprocess.run(args, capture_output=True, text=True, env=c.env, timeout=30)
        assert joined.returncode != 0
        assert "not a manager of this cluster" in joined.stderr
        # Nothing reached it: no listing asked, no token sent.
        assert impostor.calls == []


def test_a_joined_manager_names_only_the_address_it_joined_from(cluster: Cluster) -> None:
    c = cluster
    c.init_manager()
    c.join_manager("evil.example")
    cluster_id = c.json("cluster", "info")["cluster_id"]
    _, cert, _ = IdentityFiles(c.root / "evil.example" / "certs").load()
    # Its node name is its own say: not in the certificate.
    assert _names(cert) == {"127.0.0.1", manager_server_name("127.0.0.1", cluster_id)}
    assert ExtendedKeyUsageOID.SERVER_AUTH in _usages(cert)


def test_a_manager_advertising_an_address_it_does_not_join_from_is_refused(
    cluster: Cluster,
) -> None:
    c = cluster
    c.init_manager()
    token = c.join_token("manager")
    args = [*WARREN, "manager", "join", "--token", token, "--manager", c.manager_address,
            "--data-dir", str(c.root / "m2"), "--advertise-addr", "10.9.9.9",
            "--listen-addr", "127.0.0.1", "--runtime", "sim", "--node-name", "m2"]  # fmt: skip
    joined = subprocess.run(args, capture_output=True, text=True, env=c.env, timeout=60)
    assert joined.returncode != 0
    assert "not the address this request came from" in joined.stderr
    assert {n["hostname"] for n in c.nodes()} == {"manager-1"}


def test_a_manager_reissues_a_certificate_from_before_managers_alone_served(
    cluster: Cluster,
) -> None:
    """An existing cluster: the manager's certificate of the old form (which
    today's clients refuse: it does not bind the address to the manager role)
    is reissued with the same key when the manager starts."""
    c = cluster
    c.init_manager()
    certs = IdentityFiles(c.root / "manager" / "certs")
    ca_pem, cert, key = certs.load()
    ca = CertificateAuthority.from_pem(ca_pem, (certs.directory / "ca-key.pem").read_bytes())
    node_id = identity_from_pem(cert).node_id
    c.processes["manager"].stop()
    certs.save(ca_pem, legacy_leaf(ca, node_id, "manager", key), key)
    c.restart_manager()
    assert c.json("service", "ls") == []
    _, renewed, renewed_key = certs.load()
    assert renewed_key == key
    assert ca.is_current(renewed, node_id, "manager", ["127.0.0.1"])
