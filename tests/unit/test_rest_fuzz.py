"""Schemathesis drives the REST API from its own OpenAPI document.

Valid and schema-violating requests go to an in-process manager over mutual
TLS. Every answer must be no 5xx, conform to the document (status, content
type, body schema), and a refused request (4xx) must leave the store exactly as
it was. Schema-violating requests must be refused. The run is bounded
(``MAX_EXAMPLES`` per operation and mode: about 30 s).

Not checked: that every schema-valid request is accepted. The document states
each field's range and shape, but not rules across fields (a health check
needs exactly one probe) or against the state (a name already taken).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from warren.core.errors import MAX_MESSAGE
from warren.core.models import ContainerSpec, Node, NodeRole, NodeStatus, Service, ServiceSpec, Task
from warren.manager.consensus import LocalConsensus
from warren.manager.control import ControlService
from warren.manager.events import EventBus
from warren.manager.rest import build_app, openapi_document, server_ssl_context, start_rest
from warren.manager.store import Store
from warren.security.ca import CertificateAuthority, generate_key, key_pem

MAX_EXAMPLES = 15  # per operation and mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES
)
# Any 4xx refuses a schema-violating request: 413 for a body over 1 MiB, 404
# when the path names nothing, as well as 400.
schema.config.checks.negative_data_rejection.expected_statuses = ["4XX"]


def _seed(store: Store) -> None:
    """Something for references to find: a node, a service and its task."""
    spec = ServiceSpec(name="web", container=ContainerSpec(image="nginx:1.27"), replicas=1)
    store.load(
        [
            Node("node0abcdefghijklmnopqrst", NodeRole.WORKER, "edge-1", status=NodeStatus.READY),
            Service("svc0abcdefghijklmnopqrst", spec),
            Task("task0abcdefghijklmnopqrs", "svc0abcdefghijklmnopqrst", "web", spec, 1, slot=1),
        ]
    )


@dataclass
class Server:
    """A manager's REST API on its own event loop and thread (requests is synchronous)."""

    store: Store
    url: str
    session: requests.Session


def _serve(
    store: Store, ca: CertificateAuthority, ready: Future[int], stop: threading.Event
) -> None:
    key = generate_key()
    cert = ca.issue_for_key(key.public_key(), "manager-1", "manager", ["127.0.0.1"])

    async def main() -> None:
        consensus = LocalConsensus(store)
        await consensus.start()
        control = ControlService(consensus, ca)
        app = build_app(control, EventBus(store, asyncio.get_running_loop()))
        context = server_ssl_context(ca.cert_pem, cert, key_pem(key))
        runner = await start_rest(app, "127.0.0.1", 0, context)
        try:
            ready.set_result(runner.addresses[0][1])
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        finally:
            await runner.cleanup()

    asyncio.run(main())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("rest-fuzz")
    ca = CertificateAuthority.create("cluster-fuzz")
    admin_key = generate_key()
    (tmp / "ca.pem").write_bytes(ca.cert_pem)
    (tmp / "cert.pem").write_bytes(ca.issue_for_key(admin_key.public_key(), "admin", "admin"))
    (tmp / "key.pem").write_bytes(key_pem(admin_key))
    store = Store()
    _seed(store)
    ready: Future[int] = Future()
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(store, ca, ready, stop), daemon=True)
    thread.start()
    session = requests.Session()
    session.verify = str(tmp / "ca.pem")
    session.cert = (str(tmp / "cert.pem"), str(tmp / "key.pem"))
    try:
        port = ready.result(timeout=30)
        yield Server(store, f"https://127.0.0.1:{port}", session)
    finally:
        session.close()
        stop.set()
        thread.join(timeout=30)


# The event stream never ends by itself; test_rest.py covers it.
@schema.exclude(path="/v1/events").parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_rest_api(case: Any, server: Server) -> None:
    revision = server.store.revision
    before = server.store.state_hash()
    response = case.call(
        base_url=server.url,
        session=server.session,
        verify=server.session.verify,
        cert=server.session.cert,
        timeout=10,
    )
    case.validate_response(response, checks=CHECKS)
    if 400 <= response.status_code < 500:
        assert server.store.revision == revision, response.text
        assert server.store.state_hash() == before
        error = response.json()["error"]
        assert set(error) == {"code", "message"}
        assert 0 < len(error["message"]) <= MAX_MESSAGE
        assert "\n" not in error["message"]
