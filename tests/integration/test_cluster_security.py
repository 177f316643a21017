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
from harness import WARREN, Cluster

from warren.core.models import ServiceSpec
from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.proto.convert import to_message
from warren.security.tls import IdentityFiles
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

    wrong_secret = JoinToken(parse(rotated).ca_fingerprint, new_secret()).format()
    assert try_join(c, "forged", wrong_secret).returncode != 0

    other_ca = JoinToken("1" * 50, parse(rotated).secret).format()
    mitm = try_join(c, "mitm", other_ca)
    assert mitm.returncode != 0
    assert "does not match the join token" in mitm.stderr

    malformed = try_join(c, "junk", "WRN-1-nope")
    assert "invalid join token" in malformed.stderr

    # The manager token cannot join a worker either.
    assert try_join(c, "as-manager", c.join_token("manager")).returncode != 0
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
        spec = to_message(ServiceSpec(name="evil", image="busybox"), pb.ServiceSpec)
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
    status, created = rest.call("POST", "/v1/services", b'{"name": "web", "image": "busybox"}')
    assert status == 201
    state_before = rest.call("GET", "/v1/services")[1]

    bad_bodies = [
        b'{"name": "web", "image": "busybox"}',  # duplicate name
        b'{"name": "neg", "image": "busybox", "replicas": -1}',
        b'{"name": "x", "image": "busybox",',  # malformed JSON
        b'["not", "an", "object"]',
        b'{"name": "x", "image": "busybox", "replicas": "three"}',
        b'{"name": "x", "image": "busybox", "colour": "blue"}',
        b'{"name": "bad name!", "image": "busybox"}',
        b'{"name": "x", "image": "busybox", "constraints": ["node.os=linux"]}',
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
