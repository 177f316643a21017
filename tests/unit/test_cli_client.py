"""WarrenClient against an in-process gRPC server over mutual TLS (no cluster behind it)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from warren.cli.client import LogLine, WarrenClient
from warren.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from warren.core.models import ContainerSpec, Service, ServiceMode, ServiceSpec
from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.proto.convert import from_message, to_message
from warren.proto.errors import ERROR_CODE_KEY
from warren.security.ca import CertificateAuthority, generate_key, key_pem
from warren.security.tls import IdentityFiles

SERVICE = Service(
    id="svc-1",
    spec=ServiceSpec(
        name="web", container=ContainerSpec(image="nginx:1.27", args=("nginx",)), replicas=3
    ),
    spec_version=2,
    version=5,
)


class Control(pb_grpc.ControlServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.created: list[ServiceSpec] = []
        self.logs_requests: list[Any] = []

    def CreateService(self, request: Any, context: Any) -> Any:
        spec = from_message(ServiceSpec, request.spec)
        self.created.append(spec)
        return to_message(Service(id="svc-2", spec=spec), pb.Service)

    def GetService(self, request: Any, context: Any) -> Any:
        if request.service in (SERVICE.id, SERVICE.spec.name):
            return to_message(SERVICE, pb.Service)
        context.set_trailing_metadata(((ERROR_CODE_KEY, "not_found"),))
        context.abort(grpc.StatusCode.NOT_FOUND, f"service '{request.service}' not found")

    def GetClusterInfo(self, request: Any, context: Any) -> Any:
        return pb.ClusterInfo(cluster_id="c1", managers=["127.0.0.1:2377"])

    def StreamEvents(self, request: Any, context: Any) -> Iterator[Any]:
        yield pb.Event(
            revision=7,
            action="update",
            kind="service",
            timestamp=1.5,
            service=to_message(SERVICE, pb.Service),
        )

    def Logs(self, request: Any, context: Any) -> Iterator[Any]:
        self.logs_requests.append(request)
        if request.service == "nope":
            context.set_trailing_metadata(((ERROR_CODE_KEY, "not_found"),))
            context.abort(grpc.StatusCode.NOT_FOUND, "service 'nope' not found")
        for n in range(2):
            yield pb.LogLine(
                task_id="t1",
                task_name="web.1",
                node_id="n1",
                timestamp=10.5 + n,
                stream="stderr" if n else "stdout",
                line=b"line %d \xff" % n,
            )


@pytest.fixture
def tls(tmp_path: Path) -> tuple[CertificateAuthority, IdentityFiles]:
    ca = CertificateAuthority.create("cluster-1")
    admin_key = generate_key()
    admin_cert = ca.issue_for_key(admin_key.public_key(), "admin-1", "admin")
    identity = IdentityFiles(tmp_path / "admin")
    identity.save(ca.cert_pem, admin_cert, key_pem(admin_key))
    return ca, identity


@pytest.fixture
def server(tls: tuple[CertificateAuthority, IdentityFiles]) -> Iterator[tuple[str, Control]]:
    ca, _ = tls
    key = generate_key()
    cert = ca.issue_for_key(key.public_key(), "mgr-1", "manager", ["127.0.0.1", "localhost"])
    credentials = grpc.ssl_server_credentials(
        [(key_pem(key), cert + ca.cert_pem)],
        root_certificates=ca.cert_pem,
        require_client_auth=True,
    )
    control = Control()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ControlServicer_to_server(control, grpc_server)
    port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    grpc_server.start()
    try:
        yield f"127.0.0.1:{port}", control
    finally:
        grpc_server.stop(None)


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_models_round_trip(
    server: tuple[str, Control], tls: tuple[CertificateAuthority, IdentityFiles]
) -> None:
    address, control = server
    spec = ServiceSpec(
        name="agent", container=ContainerSpec(image="busybox"), mode=ServiceMode.GLOBAL, replicas=0
    )
    with WarrenClient([address], tls[1], timeout=5) as client:
        assert client.get_service("web") == SERVICE
        created = client.create_service(spec)
    assert created == Service(id="svc-2", spec=spec)
    assert control.created == [spec]


def test_server_errors_become_warren_errors(
    server: tuple[str, Control], tls: tuple[CertificateAuthority, IdentityFiles]
) -> None:
    with (
        WarrenClient([server[0]], tls[1], timeout=5) as client,
        pytest.raises(NotFound, match="service 'nope' not found"),
    ):
        client.get_service("nope")


def test_unavailable_manager_is_skipped_and_remembered(
    server: tuple[str, Control], tls: tuple[CertificateAuthority, IdentityFiles]
) -> None:
    dead = _closed_port()
    with WarrenClient([dead, server[0]], tls[1], timeout=5) as client:
        assert client.manager == dead
        assert client.get_service("web") == SERVICE
        assert client.manager == server[0]
        # The next call starts with the manager that answered.
        assert client.get_service("svc-1") == SERVICE


def test_no_manager_reachable(tls: tuple[CertificateAuthority, IdentityFiles]) -> None:
    first, second = _closed_port(), _closed_port()
    with (
        WarrenClient([first, second], tls[1], timeout=5) as client,
        pytest.raises(Unavailable, match="cannot reach any manager") as info,
    ):
        client.list_services()
    assert first in str(info.value) and second in str(info.value)


def test_cluster_info_keeps_zero_values(
    server: tuple[str, Control], tls: tuple[CertificateAuthority, IdentityFiles]
) -> None:
    with WarrenClient([server[0]], tls[1], timeout=5) as client:
        info = client.cluster_info()
    assert info["cluster_id"] == "c1"
    assert info["managers"] == ["127.0.0.1:2377"]
    assert info["is_leader"] is False
    assert info["nodes"] == 0


def test_events_carry_models(
    server: tuple[str, Control], tls: tuple[CertificateAuthority, IdentityFiles]
) -> None:
    with WarrenClient([_closed_port(), server[0]], tls[1], timeout=5) as client:
        events = list(client.events(["service"]))
    assert events == [
        {"revision": 7, "action": "update", "kind": "service", "timestamp": 1.5, "object": SERVICE}
    ]


def test_missing_identity_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="no node identity"):
        WarrenClient(["127.0.0.1:1"], IdentityFiles(tmp_path))


def test_logs_stream_lines(
    server: tuple[str, Control], tls: tuple[CertificateAuthority, IdentityFiles]
) -> None:
    address, control = server
    with WarrenClient([_closed_port(), address], tls[1], timeout=5) as client:
        lines = list(client.logs(service="web", follow=True, tail=5))
        with pytest.raises(NotFound, match="service 'nope' not found"):
            list(client.logs(service="nope"))
        with pytest.raises(InvalidArgument):
            list(client.logs(service="web", task="t1"))
    assert lines == [
        LogLine("t1", "web.1", "n1", 10.5, "stdout", b"line 0 \xff"),
        LogLine("t1", "web.1", "n1", 11.5, "stderr", b"line 1 \xff"),
    ]
    request = control.logs_requests[0]
    assert (request.service, request.task, request.follow, request.tail) == ("web", "", True, 5)
