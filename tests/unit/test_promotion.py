"""node promote / demote in the control layer, the role stream, and option mapping."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from factories import make_node

from warren.core.errors import FailedPrecondition, NotLeader, PermissionDenied
from warren.core.models import NodeRole, NodeStatus
from warren.manager.consensus import LocalConsensus
from warren.manager.control import ControlService
from warren.manager.dispatcher import Dispatcher
from warren.manager.events import EventBus
from warren.manager.grpc_api import role_update_messages
from warren.manager.join_tokens import new_cluster
from warren.manager.store import Store
from warren.node.options import ManagerOptions, WorkerOptions, manager_options, worker_options
from warren.node.roles import _busy_port
from warren.security.ca import (
    CertificateAuthority,
    generate_key,
    make_csr,
    manager_server_name,
)
from warren.security.tls import identity_from_pem


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster-promote")


@pytest.fixture
async def control(ca: CertificateAuthority) -> ControlService:
    store = Store()
    store.load(
        [
            new_cluster(ca, 0.0),
            replace(make_node("m1", role=NodeRole.MANAGER), raft_address="local"),
            make_node("w1"),
            make_node("w2", status=NodeStatus.DOWN),
        ]
    )
    consensus = LocalConsensus(store)
    await consensus.start()
    return ControlService(consensus, ca)


async def test_promote_records_the_intent(control: ControlService) -> None:
    node = await control.promote_node("w1")
    assert (node.role, node.desired_role) == (NodeRole.WORKER, NodeRole.MANAGER)
    # Asking again changes nothing.
    assert (await control.promote_node("w1")).version == node.version


async def test_only_a_ready_worker_is_promoted(control: ControlService) -> None:
    with pytest.raises(FailedPrecondition, match="only a ready worker"):
        await control.promote_node("w2")


async def test_a_node_takes_up_only_a_promotion_an_admin_asked_for(
    control: ControlService,
) -> None:
    csr = make_csr(generate_key())
    with pytest.raises(PermissionDenied, match="not being promoted"):
        await control.accept_promotion(
            "w1", csr, "127.0.0.1:3377", "127.0.0.1:3379", source="127.0.0.1"
        )
    await control.promote_node("w1")
    node, certificate = await control.accept_promotion(
        "w1", csr, "127.0.0.1:3377", "127.0.0.1:3379", source="127.0.0.1"
    )
    assert (node.role, node.desired_role) == (NodeRole.MANAGER, None)
    assert (node.api_address, node.raft_address) == ("127.0.0.1:3377", "127.0.0.1:3379")
    identity = identity_from_pem(certificate)
    assert (identity.node_id, identity.role) == ("w1", "manager")
    # A server certificate naming the address the promotion came from, nothing else.
    cert = x509.load_pem_x509_certificate(certificate)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == [
        manager_server_name("127.0.0.1", "cluster-promote")
    ]
    # A node that crashed before starting its manager asks again, on the same address.
    await control.accept_promotion(
        "w1", csr, "127.0.0.1:3377", "127.0.0.1:3379", source="127.0.0.1"
    )
    with pytest.raises(FailedPrecondition, match="Raft address"):
        await control.accept_promotion(
            "w1", csr, "127.0.0.1:3377", "127.0.0.1:4444", source="127.0.0.1"
        )


async def test_a_promotion_names_no_address_it_did_not_come_from(
    control: ControlService,
) -> None:
    await control.promote_node("w1")
    with pytest.raises(PermissionDenied, match="not the address this request came from"):
        await control.accept_promotion(
            "w1", make_csr(generate_key()), "10.9.9.9:3377", "10.9.9.9:3379", source="127.0.0.1"
        )
    assert control.get_node("w1").role == NodeRole.WORKER


async def test_demoting_a_worker_cancels_its_promotion(control: ControlService) -> None:
    await control.promote_node("w1")
    node = await control.demote_node("w1")
    assert (node.role, node.desired_role) == (NodeRole.WORKER, None)


async def test_the_last_manager_is_not_demoted(control: ControlService) -> None:
    with pytest.raises(FailedPrecondition, match="last manager"):
        await control.demote_node("m1")


async def test_role_stream_follows_the_node(control: ControlService) -> None:
    bus = EventBus(control.store, asyncio.get_running_loop())
    dispatcher = Dispatcher(control.consensus, bus, 2.0, control.manager_addresses)
    stream = role_update_messages(dispatcher, "w1")
    first = await anext(stream)
    assert (first.role, first.desired_role) == ("worker", "")
    await control.promote_node("w1")
    second = await asyncio.wait_for(anext(stream), 5)
    assert (second.role, second.desired_role) == ("worker", "manager")
    await cast(AsyncGenerator[Any, None], stream).aclose()


async def test_role_stream_is_the_leaders(control: ControlService) -> None:
    await control.consensus.stop()
    bus = EventBus(control.store, asyncio.get_running_loop())
    dispatcher = Dispatcher(control.consensus, bus, 2.0, control.manager_addresses)
    with pytest.raises(NotLeader):
        await anext(dispatcher.watch_role("w1"))


def test_a_promoted_worker_runs_the_manager_it_was_given_ports_for(tmp_path: Path) -> None:
    worker = WorkerOptions(
        tmp_path, token="t", managers=["m:1"], runtime="sim", api_port=3377, raft_port=3379
    )
    manager = manager_options(worker)
    assert (manager.data_dir, manager.runtime) == (tmp_path, "sim")
    assert (manager.api_address, manager.raft_address) == ("127.0.0.1:3377", "127.0.0.1:3379")
    back = worker_options(replace(manager, join_managers=["m:1"]))
    assert replace(back, token="t") == worker
    assert isinstance(manager, ManagerOptions)


def test_a_busy_port_stops_a_promotion_before_it_is_asked_for(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        # Port 0 binds anywhere: only the API port is taken.
        options = ManagerOptions(tmp_path, listen_addr="127.0.0.1", api_port=port)
        options = replace(options, rest_port=0, metrics_port=0, raft_port=0)
        assert f"127.0.0.1:{port}" in _busy_port(options)
    assert _busy_port(options) == ""
