"""Bad input through both APIs: one-line bounded errors, the right status, nothing changed.

Regression tests for the "Also found" items of issue #7: validation errors on
gRPC (once UNKNOWN with a Python repr), echoed input without bound, aiohttp's
plain-text 400, destructive calls on a one-character ID prefix, and the OpenAPI
document's security scheme and limits.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.core.errors import MAX_MESSAGE, safe_message
from warren.core.models import (
    LABEL_KEY_RE,
    MAX_REPLICAS,
    NAME_RE,
    ContainerSpec,
    Node,
    NodeRole,
    NodeStatus,
    Service,
    ServiceSpec,
)
from warren.manager.consensus import LocalConsensus
from warren.manager.control import DESTRUCTIVE_MIN_PREFIX, ControlService
from warren.manager.dispatcher import Dispatcher
from warren.manager.events import EventBus
from warren.manager.grpc_api import ControlServicer
from warren.manager.rest import build_app, openapi_document, server_ssl_context, start_rest
from warren.manager.store import Kind, Store
from warren.proto import warren_pb2 as pb
from warren.proto import warren_pb2_grpc as pb_grpc
from warren.proto.errors import ERROR_CODE_KEY
from warren.security.ca import CertificateAuthority, generate_key, key_pem

NODE_ID = "0a1b2c3d4e5f6g7h8i9j0k1l2"
SERVICE_ID = "9z8y7x6w5v4u3t2s1r0q9p8o7"


@dataclass(frozen=True)
class Identity:
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: Identity
    admin: Identity

    def client_context(self, tmp: Path) -> ssl.SSLContext:
        (tmp / "cert.pem").write_bytes(self.admin.cert)
        (tmp / "key.pem").write_bytes(self.admin.key)
        context = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
        return context


def _identity(ca: CertificateAuthority, node_id: str, role: str, sans: list[str]) -> Identity:
    key = generate_key()
    return Identity(ca.issue_for_key(key.public_key(), node_id, role, sans), key_pem(key))


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = CertificateAuthority.create("cluster-input")
    return Pki(
        ca,
        _identity(ca, "manager-1", "manager", ["127.0.0.1"]),
        _identity(ca, "admin-1", "admin", []),
    )


@dataclass
class Apis:
    store: Store
    control: ControlService
    rest_url: str
    rest_port: int
    session: aiohttp.ClientSession
    stub: Any

    async def rest(self, method: str, path: str, body: Any = None) -> tuple[int, Any, int]:
        """Status, decoded body and the body's size in bytes."""
        async with self.session.request(method, self.rest_url + path, json=body) as response:
            raw = await response.read()
            return response.status, json.loads(raw) if raw else None, len(raw)


def _seed(store: Store) -> None:
    spec = ServiceSpec(name="web", container=ContainerSpec(image="nginx:1.27"), replicas=2)
    store.load(
        [
            Node(NODE_ID, NodeRole.WORKER, "edge-1", status=NodeStatus.READY),
            Service(SERVICE_ID, spec),
        ]
    )


@pytest.fixture
async def apis(pki: Pki, tmp_path: Path) -> AsyncIterator[Apis]:
    store = Store()
    _seed(store)
    consensus = LocalConsensus(store)
    await consensus.start()
    control = ControlService(consensus, pki.ca)
    bus = EventBus(store, asyncio.get_running_loop())
    context = server_ssl_context(pki.ca.cert_pem, pki.server.cert, pki.server.key)
    runner = await start_rest(build_app(control, bus), "127.0.0.1", 0, context)
    rest_port = runner.addresses[0][1]
    dispatcher = Dispatcher(consensus, bus, 10.0, list)
    server = grpc.aio.server()
    pb_grpc.add_ControlServicer_to_server(ControlServicer(control, bus, dispatcher, None), server)
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key, pki.server.cert)],
        root_certificates=pki.ca.cert_pem,
        require_client_auth=True,
    )
    grpc_port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{grpc_port}",
        grpc.ssl_channel_credentials(pki.ca.cert_pem, pki.admin.key, pki.admin.cert),
    )
    connector = aiohttp.TCPConnector(ssl=pki.client_context(tmp_path))
    session = aiohttp.ClientSession(connector=connector)
    try:
        yield Apis(
            store,
            control,
            f"https://127.0.0.1:{rest_port}",
            rest_port,
            session,
            pb_grpc.ControlStub(channel),
        )
    finally:
        await session.close()
        await channel.close()
        await server.stop(None)
        await runner.cleanup()


async def _rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def _warren_code(error: grpc.aio.AioRpcError) -> str | None:
    return next((v for k, v in error.trailing_metadata() or () if k == ERROR_CODE_KEY), None)


def _one_line(message: str) -> None:
    assert message
    assert "\n" not in message and "\x00" not in message
    assert len(message) <= MAX_MESSAGE


# -- gRPC: every validation error is INVALID_ARGUMENT with Warren's message -------------


_X = pb.ContainerSpec(image="x")

GRPC_BAD_CALLS = [
    pytest.param(
        "UpdateNode", pb.UpdateNodeRequest(node="edge-1", availability="off"), "availability 'off'"
    ),
    pytest.param("CreateService", pb.CreateServiceRequest(), "missing field 'spec'"),
    pytest.param(
        "CreateService",
        pb.CreateServiceRequest(spec=pb.ServiceSpec()),
        "spec: missing field 'name'",
    ),
    pytest.param(
        "CreateService",
        pb.CreateServiceRequest(spec=pb.ServiceSpec(name="db")),
        "spec: missing field 'container'",
    ),
    pytest.param(
        "UpdateService",
        pb.UpdateServiceRequest(service="web", spec=pb.ServiceSpec(container=_X)),
        "spec: missing field 'name'",
    ),
    pytest.param(
        "UpdateService",
        pb.UpdateServiceRequest(
            service="web", spec=pb.ServiceSpec(name="web", container=_X), version=-1
        ),
        "version",
    ),
    pytest.param("ScaleService", pb.ScaleServiceRequest(service="web", replicas=-1), "replicas"),
    pytest.param(
        "RemoveNode", pb.RemoveNodeRequest(node="0", force=True), "too short", id="rm-prefix-1"
    ),
    pytest.param("DeleteService", pb.ServiceRef(service="9z8"), "too short", id="delete-prefix-3"),
    pytest.param("DemoteNode", pb.DemoteNodeRequest(node="0a"), "too short", id="demote-prefix-2"),
]


@pytest.mark.parametrize(("method", "request_", "expected"), GRPC_BAD_CALLS)
async def test_grpc_bad_input_is_invalid_argument_and_changes_nothing(
    apis: Apis, method: str, request_: Any, expected: str
) -> None:
    revision = apis.store.revision
    error = await _rpc_error(getattr(apis.stub, method)(request_, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert _warren_code(error) == "invalid_argument"
    details = error.details() or ""
    _one_line(details)
    assert expected in details
    for python_leak in ("__init__", "Traceback", "ValueError", "<"):
        assert python_leak not in details
    assert apis.store.revision == revision


async def test_grpc_bad_stream_requests_are_invalid_argument(apis: Apis) -> None:
    error = await _rpc_error(
        _drain(apis.stub.Logs(pb.LogsRequest(service="web", tail=-1), timeout=10))
    )
    assert (error.code(), _warren_code(error)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_argument",
    )
    error = await _rpc_error(
        _drain(apis.stub.StreamEvents(pb.StreamEventsRequest(kinds=["cluster"]), timeout=10))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown event kind 'cluster'" in (error.details() or "")


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


async def test_grpc_unexpected_fault_is_generic_internal(
    apis: Apis, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode() -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(apis.control, "list_services", explode)
    error = await _rpc_error(apis.stub.ListServices(pb.Empty(), timeout=10))
    assert (error.code(), _warren_code(error)) == (grpc.StatusCode.INTERNAL, "internal")
    assert "secret detail" not in (error.details() or "")


# -- echoed input: bounded, one line, escaped -------------------------------------------


async def test_a_huge_name_gives_a_small_error(apis: Apis) -> None:
    name = "n" * 500_000
    revision = apis.store.revision
    status, body, size = await apis.rest(
        "POST", "/v1/services", {"name": name, "container": {"image": "x"}}
    )
    assert status == 400
    assert size < 2 * MAX_MESSAGE
    message = body["error"]["message"]
    _one_line(message)
    # The advice after the echoed name survives.
    assert "use 1-63 letters" in message
    error = await _rpc_error(
        apis.stub.CreateService(
            pb.CreateServiceRequest(spec=pb.ServiceSpec(name=name, container=_X)), timeout=10
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(error.details() or "") < 2 * MAX_MESSAGE
    status, body, size = await apis.rest("GET", "/v1/services/" + "s" * 8000)
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert size < 2 * MAX_MESSAGE
    # Past aiohttp's request-line limit: its refusal is bounded JSON too.
    status, body, size = await apis.rest("GET", "/v1/services/" + "s" * 100_000)
    assert (status, body["error"]["code"]) == (400, "invalid_argument")
    assert size < 2 * MAX_MESSAGE
    assert apis.store.revision == revision


async def test_newlines_and_nul_are_escaped_not_cut(apis: Apis) -> None:
    status, body, _ = await apis.rest(
        "POST", "/v1/services", {"name": "we\nb\x00x", "container": {"image": "x"}}
    )
    assert status == 400
    message = body["error"]["message"]
    _one_line(message)
    assert "we\\nb\\x00x" in message
    assert message.endswith("'-'")  # what follows the name is there

    status, body, _ = await apis.rest("GET", "/v1/events?kinds=task,a%0Ab")
    assert status == 400
    assert "'a\\nb'" in body["error"]["message"]


async def test_oversized_header_gets_the_json_error_shape(apis: Apis) -> None:
    headers = {"X-Big": "h" * 20_000}
    async with apis.session.get(apis.rest_url + "/v1/services", headers=headers) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        body = await response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "invalid_argument"
    _one_line(body["error"]["message"])


@given(st.text(max_size=3000))
@settings(max_examples=200, deadline=None)
def test_safe_message_is_one_bounded_line(text: str) -> None:
    message = safe_message(text)
    assert 0 < len(message) <= MAX_MESSAGE
    assert message.isprintable()
    message.encode("utf-8")  # no unpaired surrogate reaches the wire
    if text.strip().isprintable() and len(text.strip()) <= MAX_MESSAGE and text.strip():
        assert message == text.strip()


def test_safe_message_keeps_both_ends() -> None:
    message = safe_message("invalid name '" + "x" * 5000 + "': use letters")
    assert message.startswith("invalid name 'xxx")
    assert message.endswith("': use letters")


# -- destructive calls need an unambiguous prefix of a few characters ------------------


async def test_rest_delete_by_a_short_prefix_is_refused(apis: Apis) -> None:
    revision = apis.store.revision
    for path in ("/v1/nodes/0?force=true", "/v1/services/9", "/v1/services/9z8y7"):
        status, body, _ = await apis.rest("DELETE", path)
        assert (status, body["error"]["code"]) == (400, "invalid_argument"), path
        assert f"at least {DESTRUCTIVE_MIN_PREFIX} characters" in body["error"]["message"]
    assert apis.store.revision == revision
    assert apis.store.find(Kind.NODE, NODE_ID) is not None
    # Reads still take any unique prefix.
    status, body, _ = await apis.rest("GET", "/v1/nodes/0")
    assert (status, body["id"]) == (200, NODE_ID)


async def test_rest_delete_by_a_long_enough_prefix_or_name_works(apis: Apis) -> None:
    prefix = NODE_ID[:DESTRUCTIVE_MIN_PREFIX]
    status, _, _ = await apis.rest("DELETE", f"/v1/nodes/{prefix}?force=true")
    assert status == 204
    assert apis.store.find(Kind.NODE, NODE_ID) is None
    # A name is never a prefix: "web" (3 characters) removes the service.
    status, _, _ = await apis.rest("DELETE", "/v1/services/web")
    assert status == 204
    assert apis.store.list(Kind.SERVICE) == []


# -- the OpenAPI document ---------------------------------------------------------------


def _schemas() -> dict[str, Any]:
    return dict(openapi_document()["components"]["schemas"])


def test_openapi_describes_mutual_tls_not_an_authorization_header() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    schemes = doc["components"]["securitySchemes"]
    assert [s["type"] for s in schemes.values()] == ["mutualTLS"]
    assert "Authorization" in doc["info"]["description"]  # says there is none


def test_openapi_states_the_limits_the_models_enforce() -> None:
    schemas = _schemas()
    spec = schemas["ServiceSpec"]["properties"]
    assert spec["replicas"]["minimum"] == 0
    assert spec["replicas"]["maximum"] == MAX_REPLICAS
    assert schemas["ScaleRequest"]["properties"]["replicas"]["maximum"] == MAX_REPLICAS
    assert NAME_RE.pattern in spec["name"]["pattern"]
    assert LABEL_KEY_RE.pattern in spec["labels"]["propertyNames"]["pattern"]
    assert (
        LABEL_KEY_RE.pattern in schemas["Node"]["properties"]["labels"]["propertyNames"]["pattern"]
    )
    assert "pattern" in schemas["ContainerSpec"]["properties"]["env"]["propertyNames"]
    # Every integer field of a model has a range: none past what protobuf carries.
    for name, schema in schemas.items():
        if name in ("Event", "Error"):
            continue
        for prop in schema.get("properties", {}).values():
            if prop.get("type") == "integer":
                assert -(2**63) <= prop["minimum"] <= prop["maximum"] < 2**63


@given(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=70)
    | st.from_regex(NAME_RE, fullmatch=True)
)
@settings(max_examples=300, deadline=None)
def test_openapi_name_pattern_agrees_with_the_model(name: str) -> None:
    pattern = _schemas()["ServiceSpec"]["properties"]["name"]["pattern"]
    assert bool(re.search(pattern, name)) == bool(NAME_RE.fullmatch(name))


async def test_served_document_is_the_generated_one(apis: Apis) -> None:
    status, doc, _ = await apis.rest("GET", "/openapi.json")
    assert status == 200
    assert doc == json.loads(json.dumps(openapi_document()))
