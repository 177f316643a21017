from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from warren.core.codec import from_dict, to_dict
from warren.core.errors import InvalidArgument
from warren.core.models import (
    ContainerSpec,
    Node,
    NodeRole,
    NodeStatus,
    Service,
    ServiceSpec,
    Task,
    TaskStatus,
)
from warren.core.states import TaskState
from warren.manager import rest
from warren.manager.consensus import LocalConsensus
from warren.manager.control import ControlService
from warren.manager.events import EventBus
from warren.manager.join_tokens import new_cluster
from warren.manager.metrics import Metrics
from warren.manager.rest import STREAMS, build_app, server_ssl_context, start_rest
from warren.manager.store import Kind, Store
from warren.security.ca import CertificateAuthority, generate_key, key_pem


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    directory: Path

    def issue(self, node_id: str, role: str, ca: CertificateAuthority | None = None) -> Path:
        """Write a key and certificate for ``role``; returns their directory."""
        key = generate_key()
        # Only a manager certificate names an address (it alone serves).
        sans = ["127.0.0.1"] if role == "manager" else []
        cert = (ca or self.ca).issue_for_key(key.public_key(), node_id, role, sans)
        target = self.directory / node_id
        target.mkdir()
        (target / "cert.pem").write_bytes(cert)
        (target / "key.pem").write_bytes(key_pem(key))
        return target

    def client(self, identity: Path | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        if identity is not None:
            context.load_cert_chain(identity / "cert.pem", identity / "key.pem")
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(CertificateAuthority.create("cluster-rest"), tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server_identity(pki: Pki) -> Path:
    return pki.issue("manager-1", "manager")


@pytest.fixture(scope="module")
def admin(pki: Pki) -> Path:
    return pki.issue("admin-1", "admin")


@pytest.fixture(scope="module")
def worker(pki: Pki) -> Path:
    return pki.issue("worker-1", "worker")


@dataclass
class Api:
    url: str
    port: int
    store: Store
    control: ControlService
    app: web.Application
    metrics: Metrics
    runner: web.AppRunner
    session: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"json": body} if raw is None else {"data": raw}
        async with self.session.request(method, self.url + path, **kwargs) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def create(self, name: str = "web", replicas: int = 2) -> dict[str, Any]:
        status, body = await self.call(
            "POST",
            "/v1/services",
            {"name": name, "container": {"image": "nginx:1.27"}, "replicas": replicas},
        )
        assert status == 201, body
        return body  # type: ignore[no-any-return]


@pytest.fixture
async def api(pki: Pki, server_identity: Path, admin: Path) -> AsyncIterator[Api]:
    store = Store()
    store.load([new_cluster(pki.ca, 0.0)])
    consensus = LocalConsensus(store)
    await consensus.start()
    control = ControlService(consensus, pki.ca)
    bus = EventBus(store, asyncio.get_running_loop())
    metrics = Metrics(store, consensus)
    app = build_app(control, bus, metrics)
    context = server_ssl_context(
        pki.ca.cert_pem,
        (server_identity / "cert.pem").read_bytes(),
        (server_identity / "key.pem").read_bytes(),
    )
    runner = await start_rest(app, "127.0.0.1", 0, context)
    port = runner.addresses[0][1]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=pki.client(admin)))
    try:
        url = f"https://127.0.0.1:{port}"
        yield Api(url, port, store, control, app, metrics, runner, session)
    finally:
        await session.close()
        await runner.cleanup()


def _error_code(body: Any) -> str:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert "\n" not in body["error"]["message"]
    return str(body["error"]["code"])


# -- services --------------------------------------------------------------------


async def test_service_lifecycle(api: Api) -> None:
    created = await api.create("web", replicas=2)
    assert created["spec"]["name"] == "web"
    assert created["spec"]["replicas"] == 2
    service_id = created["id"]

    status, listed = await api.call("GET", "/v1/services")
    assert status == 200
    assert [s["id"] for s in listed] == [service_id]

    for ref in (service_id, service_id[:6], "web"):
        status, got = await api.call("GET", f"/v1/services/{ref}")
        assert status == 200
        assert got["id"] == service_id

    spec = dict(created["spec"])
    spec["container"] = dict(spec["container"], image="nginx:1.28")
    status, updated = await api.call(
        "PUT", "/v1/services/web", {"spec": spec, "version": created["version"]}
    )
    assert status == 200
    assert updated["spec"]["container"]["image"] == "nginx:1.28"
    assert updated["spec_version"] == 2

    status, body = await api.call("PUT", "/v1/services/web", {"spec": spec, "version": 1})
    assert status == 409
    assert _error_code(body) == "conflict"

    status, scaled = await api.call("POST", "/v1/services/web/scale", {"replicas": 5})
    assert status == 200
    assert scaled["spec"]["replicas"] == 5

    status, body = await api.call("DELETE", f"/v1/services/{service_id}")
    assert (status, body) == (204, None)
    status, body = await api.call("GET", f"/v1/services/{service_id}")
    assert status == 404
    assert _error_code(body) == "not_found"
    assert api.store.list(Kind.SERVICE) == []


async def test_update_without_version_applies_to_current(api: Api) -> None:
    created = await api.create("web")
    spec = dict(created["spec"])
    spec["container"] = dict(spec["container"], env={"MODE": "prod"})
    status, updated = await api.call("PUT", "/v1/services/web", {"spec": spec})
    assert status == 200
    assert updated["spec"]["container"]["env"] == {"MODE": "prod"}


async def test_duplicate_service_name_conflicts_and_changes_nothing(api: Api) -> None:
    first = await api.create("web")
    revision = api.store.revision
    status, body = await api.call(
        "POST", "/v1/services", {"name": "web", "container": {"image": "redis:7"}}
    )
    assert status == 409
    assert _error_code(body) == "already_exists"
    assert api.store.revision == revision
    assert [s.id for s in api.store.list(Kind.SERVICE)] == [first["id"]]


async def test_negative_replicas_rejected_and_change_nothing(api: Api) -> None:
    await api.create("web", replicas=2)
    revision = api.store.revision
    status, body = await api.call(
        "POST",
        "/v1/services",
        {"name": "db", "container": {"image": "postgres:16"}, "replicas": -1},
    )
    assert status == 400
    assert _error_code(body) == "invalid_argument"
    status, body = await api.call("POST", "/v1/services/web/scale", {"replicas": -3})
    assert status == 400
    assert _error_code(body) == "invalid_argument"
    assert api.store.revision == revision
    assert api.store.service_by_name("web").spec.replicas == 2  # type: ignore[union-attr]


BAD_BODIES = [
    pytest.param(b"{not json", id="malformed"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff\xfe\x00", id="not-utf8"),
    pytest.param(b"[1, 2]", id="array"),
    pytest.param(b'"text"', id="string"),
    pytest.param(b"null", id="null"),
    pytest.param(b"[" * 100_000, id="deeply-nested"),
    pytest.param(b'{"surprise": 1}', id="unknown-field"),
    pytest.param(b'{"replicas": "three"}', id="wrong-type"),
    pytest.param(b'{"replicas": NaN}', id="nan"),
    pytest.param(b'{"replicas": 1e999}', id="overflow"),
]
WRITE_ROUTES = [
    ("POST", "/v1/services"),
    ("PUT", "/v1/services/web"),
    ("POST", "/v1/services/web/scale"),
    ("PUT", "/v1/nodes/node-1"),
]


@pytest.mark.parametrize(("method", "path"), WRITE_ROUTES)
@pytest.mark.parametrize("raw", BAD_BODIES)
async def test_bad_bodies_are_400_and_change_nothing(
    api: Api, method: str, path: str, raw: bytes
) -> None:
    await api.create("web")
    api.store.load([Node("node-1", NodeRole.WORKER, "host-1")])
    revision = api.store.revision
    status, body = await api.call(method, path, raw=raw)
    assert status == 400, body
    assert _error_code(body) == "invalid_argument"
    assert api.store.revision == revision


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/services", {"name": "db"}),
        ("POST", "/v1/services", {"name": "db", "container": {"image": "x", "env": {"A": 1}}}),
        ("POST", "/v1/services", {"name": "db", "container": {"image": "x"}, "mode": "sideways"}),
        ("POST", "/v1/services", {"name": "db", "container": {"image": "x", "args": "ls"}}),
        ("POST", "/v1/services", {"name": "bad name!", "container": {"image": "x"}}),
        ("PUT", "/v1/services/web", {"version": 1}),
        (
            "PUT",
            "/v1/services/web",
            {"spec": {"name": "web", "container": {"image": "x"}}, "version": -1},
        ),
        (
            "PUT",
            "/v1/services/web",
            {"spec": {"name": "web", "container": {"image": "x"}}, "extra": True},
        ),
        (
            "PUT",
            "/v1/services/web",
            {"spec": {"name": "web", "container": {"image": "x"}, "mode": "global"}},
        ),
        ("POST", "/v1/services/web/scale", {}),
        ("POST", "/v1/services/web/scale", {"replicas": 1.5}),
        ("POST", "/v1/services/web/scale", {"replicas": True}),
        ("PUT", "/v1/nodes/node-1", {"availability": "asleep"}),
        ("PUT", "/v1/nodes/node-1", {"label_add": {"zone": 1}}),
        ("PUT", "/v1/nodes/node-1", {"label_add": {"bad key": "x"}}),
        ("PUT", "/v1/nodes/node-1", {"label_rm": "zone"}),
    ],
)
async def test_invalid_fields_are_400_and_change_nothing(
    api: Api, method: str, path: str, body: Any
) -> None:
    await api.create("web")
    api.store.load([Node("node-1", NodeRole.WORKER, "host-1")])
    revision = api.store.revision
    status, answer = await api.call(method, path, body)
    assert status == 400, answer
    assert _error_code(answer) == "invalid_argument"
    assert api.store.revision == revision


async def test_oversized_body_is_413_json(api: Api) -> None:
    # A file-like body: aiohttp warns about sending large raw bytes.
    body = io.BytesIO(b" " * (2 * 1024 * 1024))
    async with api.session.post(api.url + "/v1/services", data=body) as response:
        assert response.status == 413
        assert _error_code(await response.json()) == "payload_too_large"


# -- nodes and tasks -----------------------------------------------------------------


async def test_nodes(api: Api) -> None:
    api.store.load(
        [
            Node("node-aaaa", NodeRole.WORKER, "edge-1", status=NodeStatus.READY),
            Node("node-bbbb", NodeRole.MANAGER, "core-1", status=NodeStatus.READY),
        ]
    )
    status, nodes = await api.call("GET", "/v1/nodes")
    assert status == 200
    assert [n["hostname"] for n in nodes] == ["core-1", "edge-1"]

    status, node = await api.call("GET", "/v1/nodes/edge-1")
    assert (status, node["id"]) == (200, "node-aaaa")

    status, node = await api.call(
        "PUT", "/v1/nodes/node-aaaa", {"availability": "drain", "label_add": {"zone": "a"}}
    )
    assert status == 200
    assert (node["availability"], node["labels"]) == ("drain", {"zone": "a"})

    status, node = await api.call("PUT", "/v1/nodes/edge-1", {"label_rm": ["zone"]})
    # Empty labels are left out of the JSON (their default); decoding gives them back.
    assert (status, "labels" in node, node["availability"]) == (200, False, "drain")
    assert from_dict(Node, node).labels == {}

    status, body = await api.call("DELETE", "/v1/nodes/edge-1")
    assert (status, _error_code(body)) == (412, "failed_precondition")
    status, body = await api.call("DELETE", "/v1/nodes/edge-1?force=maybe")
    assert (status, _error_code(body)) == (400, "invalid_argument")
    assert api.store.find(Kind.NODE, "node-aaaa") is not None

    status, body = await api.call("DELETE", "/v1/nodes/edge-1?force=true")
    assert (status, body) == (204, None)
    assert api.store.find(Kind.NODE, "node-aaaa") is None


async def test_tasks(api: Api) -> None:
    spec = ServiceSpec(name="web", container=ContainerSpec(image="nginx:1.27"), replicas=2)
    other = ServiceSpec(name="db", container=ContainerSpec(image="postgres:16"))
    api.store.load(
        [
            Node("node-1", NodeRole.WORKER, "edge-1"),
            Service("svc-web", spec),
            Service("svc-db", other),
            Task("task-1", "svc-web", "web", spec, 1, slot=1, node_id="node-1"),
            Task(
                "task-2",
                "svc-web",
                "web",
                spec,
                1,
                slot=2,
                status=TaskStatus(TaskState.PENDING),
            ),
            Task("task-3", "svc-db", "db", other, 1, slot=1, node_id="node-1"),
        ]
    )
    status, tasks = await api.call("GET", "/v1/tasks")
    assert status == 200
    assert sorted(t["id"] for t in tasks) == ["task-1", "task-2", "task-3"]
    # Defaults are left out at every depth; the listing decodes to the stored tasks.
    assert [from_dict(Task, t) for t in tasks] == api.control.list_tasks()
    assert tasks[0]["spec"] == {"name": "db", "container": {"image": "postgres:16"}}
    assert "desired_state" not in tasks[0] and "status" not in tasks[0]

    status, tasks = await api.call("GET", "/v1/tasks?service=web")
    assert sorted(t["id"] for t in tasks) == ["task-1", "task-2"]
    status, tasks = await api.call("GET", "/v1/tasks?node=edge-1")
    assert sorted(t["id"] for t in tasks) == ["task-1", "task-3"]
    status, tasks = await api.call("GET", "/v1/tasks?service=web&node=node-1")
    assert [t["id"] for t in tasks] == ["task-1"]

    status, task = await api.call("GET", "/v1/tasks/task-2")
    assert (status, task["status"]["state"]) == (200, "pending")
    assert from_dict(Task, task) == api.store.get(Kind.TASK, "task-2")


async def test_a_kept_listing_follows_every_write(api: Api) -> None:
    await api.create("web", replicas=1)
    _, first = await api.call("GET", "/v1/services")
    _, again = await api.call("GET", "/v1/services")
    assert again == first
    status, _ = await api.call("POST", "/v1/services/web/scale", {"replicas": 3})
    assert status == 200
    _, after = await api.call("GET", "/v1/services")
    assert [from_dict(Service, s) for s in after] == api.control.list_services()
    assert after[0]["spec"]["replicas"] == 3

    spec = from_dict(Service, after[0]).spec
    _, tasks = await api.call("GET", "/v1/tasks")
    # Seeded without an event (as a restored Raft snapshot is): the revision moved.
    api.store.load([Task("task-9", after[0]["id"], "web", spec, 2, slot=9)])
    _, tasks_after = await api.call("GET", "/v1/tasks")
    assert [t["id"] for t in tasks_after] == [t["id"] for t in tasks] + ["task-9"]

    status, body = await api.call("GET", "/v1/tasks?service=nope")
    assert (status, _error_code(body)) == (404, "not_found")


async def _raw_get(api: Api, path: str, accept: str | None) -> tuple[dict[str, str], bytes]:
    headers = {"Accept-Encoding": accept} if accept is not None else {}
    connector = aiohttp.TCPConnector(ssl=api.session.connector._ssl)  # type: ignore[union-attr]
    async with (
        aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=["Accept-Encoding"]
        ) as session,
        session.get(api.url + path, headers=headers) as response,
    ):
        assert response.status == 200
        return dict(response.headers), await response.read()


async def test_a_large_listing_is_gzipped_only_for_clients_that_accept_it(api: Api) -> None:
    service = await api.create("web", replicas=1)
    spec = from_dict(Service, service).spec
    api.store.load(
        [Task(f"task-{i:04d}", service["id"], "web", spec, 2, slot=i) for i in range(1000)]
    )
    headers, plain = await _raw_get(api, "/v1/tasks", None)
    assert len(plain) >= 128 * 1024 and "Content-Encoding" not in headers
    assert headers["Vary"] == "Accept-Encoding"
    listed = json.loads(plain)
    assert len(listed) == 1000

    for accept in ("gzip", "br;q=1.0, gzip;q=0.5", "*"):
        headers, body = await _raw_get(api, "/v1/tasks", accept)
        assert headers["Content-Encoding"] == "gzip", accept
        assert len(body) < len(plain) / 4
        assert gzip.decompress(body) == plain
    # Filtered listings (not kept) are compressed per request, to the same JSON.
    headers, body = await _raw_get(api, f"/v1/tasks?service={service['id']}", "gzip")
    assert headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(body)) == listed

    for refused in ("gzip;q=0", "identity", "*;q=0", "br", "*, gzip;q=0"):
        headers, body = await _raw_get(api, "/v1/tasks", refused)
        assert "Content-Encoding" not in headers and body == plain, refused
    # Small answers stay plain whatever the client accepts.
    headers, body = await _raw_get(api, "/v1/services", "gzip")
    assert "Content-Encoding" not in headers and len(json.loads(body)) == 1


# -- authorization and TLS --------------------------------------------------------------


async def test_worker_certificate_is_forbidden(api: Api, pki: Pki, worker: Path) -> None:
    revision = api.store.revision
    connector = aiohttp.TCPConnector(ssl=pki.client(worker))
    async with aiohttp.ClientSession(connector=connector) as session:
        for method, path in (("GET", "/v1/services"), ("POST", "/v1/services")):
            spec = {"name": "web", "container": {"image": "nginx"}}
            async with session.request(method, api.url + path, json=spec) as response:
                assert response.status == 403
                assert _error_code(await response.json()) == "permission_denied"
    assert api.store.revision == revision


async def test_no_client_certificate_fails_the_handshake(api: Api, pki: Pki) -> None:
    context = pki.client(None)
    # Under TLS 1.2 the server refuses during the handshake itself (with an
    # alert, or by resetting the connection).
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection("127.0.0.1", api.port, ssl=context)
    # Under TLS 1.3 the refusal arrives just after it; the request fails either way.
    connector = aiohttp.TCPConnector(ssl=pki.client(None))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(api.url + "/v1/services") as response:
                await response.read()


async def test_certificate_from_another_ca_fails_the_handshake(
    api: Api, pki: Pki, tmp_path: Path
) -> None:
    stranger = Pki(CertificateAuthority.create("cluster-other"), tmp_path)
    context = pki.client(stranger.issue("admin-x", "admin"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection("127.0.0.1", api.port, ssl=context)


def test_server_ssl_context(pki: Pki, server_identity: Path) -> None:
    context = server_ssl_context(
        pki.ca.cert_pem,
        (server_identity / "cert.pem").read_bytes(),
        (server_identity / "key.pem").read_bytes(),
    )
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(InvalidArgument):
        server_ssl_context(pki.ca.cert_pem, b"garbage", b"garbage")


# -- errors ------------------------------------------------------------------------------


async def test_unknown_route_is_404_json(api: Api) -> None:
    status, body = await api.call("GET", "/v2/whatever")
    assert (status, _error_code(body)) == (404, "not_found")


async def test_wrong_method_is_405_json(api: Api) -> None:
    async with api.session.patch(api.url + "/v1/services") as response:
        assert response.status == 405
        assert _error_code(await response.json()) == "method_not_allowed"
        assert set(response.headers["Allow"].split(",")) == {"GET", "POST"}


async def test_unexpected_exception_is_generic_500(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode() -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(api.control, "list_services", explode)
    with caplog.at_level(logging.ERROR, logger="warren.manager.rest"):
        status, body = await api.call("GET", "/v1/services")
    assert (status, _error_code(body)) == (500, "internal")
    assert "secret detail" not in body["error"]["message"]
    assert any(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in caplog.records)


# -- events ------------------------------------------------------------------------------


async def _read_frame(response: aiohttp.ClientResponse) -> list[str]:
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(response.content.readline(), 5)).decode()
        if line == "\n":
            return lines
        assert line, "stream ended"
        lines.append(line.rstrip("\n"))


async def test_events_stream_a_created_service(api: Api) -> None:
    async with api.session.get(api.url + "/v1/events?kinds=service") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        created = await api.create("web")
        event_line, data_line = await _read_frame(response)
    assert event_line == "event: service.create"
    assert data_line.startswith("data: ")
    data = json.loads(data_line.removeprefix("data: "))
    assert set(data) == {"revision", "action", "kind", "timestamp", "object"}
    assert (data["kind"], data["action"]) == ("service", "create")
    assert data["object"]["id"] == created["id"]
    assert data["revision"] == created["version"]


async def test_events_keepalive_and_unsubscribe_on_disconnect(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rest, "KEEPALIVE_SECONDS", 0.05)
    async with api.session.get(api.url + "/v1/events") as response:
        line = await asyncio.wait_for(response.content.readline(), 5)
        assert line == b": keepalive\n"
        assert len(api.app[STREAMS]) == 1
    # The next keepalive write fails and the handler unsubscribes.
    deadline = time.monotonic() + 5
    while api.app[STREAMS] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not api.app[STREAMS]


async def test_events_reject_unknown_kinds(api: Api) -> None:
    status, body = await api.call("GET", "/v1/events?kinds=service,gossip")
    assert (status, _error_code(body)) == (400, "invalid_argument")


async def test_shutdown_ends_open_event_streams(api: Api) -> None:
    async with api.session.get(api.url + "/v1/events") as response:
        assert response.status == 200
        started = time.monotonic()
        await api.runner.cleanup()
        assert time.monotonic() - started < rest.SHUTDOWN_TIMEOUT
        assert await asyncio.wait_for(response.content.read(), 5) == b""


# -- OpenAPI and metrics -----------------------------------------------------------------


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


async def test_openapi_matches_the_router(api: Api) -> None:
    status, doc = await api.call("GET", "/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    documented = {
        (path, method.upper()) for path, methods in doc["paths"].items() for method in methods
    }
    routed = {(r.resource.canonical, r.method) for r in api.app.router.routes() if r.resource}
    assert documented == routed

    operations = [op for methods in doc["paths"].values() for op in methods.values()]
    names = {r.name for r in api.app.router.routes()}
    assert {op["operationId"] for op in operations} == names
    assert len(operations) == len(names)

    schemas = doc["components"]["schemas"]
    assert {"ServiceSpec", "Service", "Node", "Task", "Error"} <= set(schemas)
    for ref in _refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    assert schemas["ServiceSpec"]["required"] == ["name", "container"]
    assert schemas["ContainerSpec"]["required"] == ["image"]
    assert schemas["ServiceSpec"]["additionalProperties"] is False
    assert schemas["ServiceSpec"]["properties"]["mode"]["enum"] == ["replicated", "global"]


def _filled(value: Any, schema: dict[str, Any], schemas: dict[str, Any]) -> Any:
    """``value`` with every property it leaves out set to the document's default, at
    every depth; checks that it sends every required property and nothing unnamed."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:
        if value is None:
            return None
        schema = schema["anyOf"][0]
    if isinstance(value, list):
        return [_filled(item, schema["items"], schemas) for item in value]
    if isinstance(value, dict) and "properties" in schema:
        properties = schema["properties"]
        assert set(schema.get("required", [])) <= set(value) <= set(properties)
        return {
            name: _filled(value[name] if name in value else prop["default"], prop, schemas)
            for name, prop in properties.items()
        }
    if isinstance(value, dict):
        item = schema["additionalProperties"]
        return {key: _filled(v, item, schemas) for key, v in value.items()}
    return value


async def test_openapi_defaults_restore_what_responses_leave_out(api: Api) -> None:
    spec = ServiceSpec(
        name="web",
        container=ContainerSpec(image="nginx:1.27", env={"A": "1"}, read_only=True),
        replicas=3,
        labels={"tier": "front"},
    )
    running = TaskStatus(TaskState.RUNNING, message="started", container_id="c1", timestamp=5.0)
    api.store.load(
        [
            Node("node-1", NodeRole.WORKER, "edge-1", status=NodeStatus.READY),
            Service("svc-web", spec, spec_version=2),
            Task("task-1", "svc-web", "web", spec, 2, slot=1, node_id="node-1", status=running),
            Task("task-2", "svc-web", "web", spec, 1, slot=2, desired_state=TaskState.SHUTDOWN),
        ]
    )
    _, doc = await api.call("GET", "/openapi.json")
    schemas = doc["components"]["schemas"]
    for path, name, expected in (
        ("/v1/tasks", "Task", api.control.list_tasks()),
        ("/v1/services", "Service", api.control.list_services()),
        ("/v1/nodes", "Node", api.control.list_nodes()),
    ):
        status, listed = await api.call("GET", path)
        assert status == 200
        ref = {"$ref": f"#/components/schemas/{name}"}
        filled = [_filled(item, ref, schemas) for item in listed]
        assert filled == [to_dict(obj) for obj in expected], path
        assert len(json.dumps(listed)) < len(json.dumps(filled)) / 2, path


async def test_request_latency_is_recorded(api: Api) -> None:
    await api.create("web")
    await api.call("GET", "/v1/services")
    await api.call("GET", "/nowhere")
    text = api.metrics.render().decode()
    for method in ("create_service", "list_services", "unmatched"):
        labels = f'api="rest",method="{method}"'
        assert f"warren_api_request_duration_seconds_count{{{labels}}} 1.0" in text
