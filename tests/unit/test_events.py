"""Event fan-out: what API clients may watch."""

from __future__ import annotations

import asyncio

import pytest
from factories import make_service

from warren.core.errors import InvalidArgument
from warren.core.models import Cluster
from warren.manager.events import PUBLIC_KINDS, EventBus, public_kinds
from warren.manager.store import MUST_NOT_EXIST, Kind, Store, put, txn


def test_no_kinds_means_every_public_kind_and_never_the_cluster() -> None:
    assert public_kinds([]) == PUBLIC_KINDS
    assert Kind.CLUSTER not in PUBLIC_KINDS
    assert public_kinds(["task", " service"]) == {Kind.TASK, Kind.SERVICE}


@pytest.mark.parametrize("name", ["cluster", "bogus", ""])
def test_private_or_unknown_kinds_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="unknown event kind"):
        public_kinds([name])


async def test_a_public_subscription_does_not_see_join_token_secrets() -> None:
    store = Store()
    bus = EventBus(store, asyncio.get_running_loop())
    subscription = bus.subscribe(public_kinds([]))
    # Positive control: an unfiltered subscription on the same bus, so the
    # public one staying empty cannot come from the event never being published.
    everything = bus.subscribe(None)
    cluster = Cluster(
        id="c1",
        worker_token_secret="worker-secret",
        manager_token_secret="manager-secret",
        ca_fingerprint="f" * 50,
    )
    store.apply(txn([put(cluster, MUST_NOT_EXIST)], at=0.0))
    service = make_service("web")
    store.apply(txn([put(service, MUST_NOT_EXIST)], at=0.0))
    await asyncio.sleep(0.01)  # the bus hops onto the loop
    assert [(e.kind, e.object.id) for e in everything.drain()] == [
        (Kind.CLUSTER, "c1"),
        (Kind.SERVICE, service.id),
    ]
    # The public subscription works (it saw the service) and left the cluster out.
    assert [(e.kind, e.object.id) for e in subscription.drain()] == [(Kind.SERVICE, service.id)]
