from __future__ import annotations

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

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
from warren.manager.consensus import LocalConsensus
from warren.manager.metrics import Metrics, start_metrics
from warren.manager.store import barrier

METRIC_NAMES = (
    "warren_api_request_duration_seconds",
    "warren_nodes_total",
    "warren_services_total",
    "warren_tasks_total",
    "warren_raft_is_leader",
    "warren_raft_last_log_index",
)


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _seed(consensus: LocalConsensus) -> None:
    spec = ServiceSpec(name="web", container=ContainerSpec(image="nginx:1.27"))
    consensus.store.load(
        [
            Node("m1", NodeRole.MANAGER, "core-1", status=NodeStatus.READY),
            Node("w1", NodeRole.WORKER, "edge-1", status=NodeStatus.DOWN),
            Node("w2", NodeRole.WORKER, "edge-2", status=NodeStatus.DOWN),
            Service("svc-1", spec),
            Service("svc-2", ServiceSpec(name="db", container=ContainerSpec(image="postgres:16"))),
            Task("t1", "svc-1", "web", spec, 1, slot=1, status=TaskStatus(TaskState.RUNNING)),
            Task("t2", "svc-1", "web", spec, 1, slot=2, status=TaskStatus(TaskState.RUNNING)),
            Task("t3", "svc-1", "web", spec, 1, slot=3),
        ]
    )


async def test_cluster_gauges_reflect_the_store() -> None:
    consensus = LocalConsensus()
    await consensus.start()
    _seed(consensus)
    samples = _samples(Metrics(consensus.store, consensus))

    nodes = {
        labels: value for (name, labels), value in samples.items() if name == "warren_nodes_total"
    }
    # Every role x status combination, zeros included.
    assert len(nodes) == 6
    assert nodes[(("role", "manager"), ("status", "ready"))] == 1
    assert nodes[(("role", "worker"), ("status", "down"))] == 2
    assert nodes[(("role", "worker"), ("status", "ready"))] == 0

    assert samples[("warren_services_total", ())] == 2
    tasks = {
        dict(labels)["state"]: value
        for (name, labels), value in samples.items()
        if name == "warren_tasks_total"
    }
    assert set(tasks) == {state.value for state in TaskState}
    assert (tasks["running"], tasks["new"], tasks["failed"]) == (2, 1, 0)


async def test_raft_gauges_follow_consensus() -> None:
    consensus = LocalConsensus()
    metrics = Metrics(consensus.store, consensus)
    assert _samples(metrics)[("warren_raft_is_leader", ())] == 0
    await consensus.start()
    await consensus.propose(barrier())
    await consensus.propose(barrier())
    samples = _samples(metrics)
    assert samples[("warren_raft_is_leader", ())] == 1
    assert samples[("warren_raft_last_log_index", ())] == 2


async def test_several_instances_in_one_process_are_independent() -> None:
    first_consensus, second_consensus = LocalConsensus(), LocalConsensus()
    first = Metrics(first_consensus.store, first_consensus)
    second = Metrics(second_consensus.store, second_consensus)
    first.observe("rest", "list_services", 0.002)
    first.observe("rest", "list_services", 0.3)
    key = (
        "warren_api_request_duration_seconds_count",
        (("api", "rest"), ("method", "list_services")),
    )
    assert _samples(first)[key] == 2
    assert key not in _samples(second)
    bucket = (
        "warren_api_request_duration_seconds_bucket",
        (("api", "rest"), ("le", "0.0025"), ("method", "list_services")),
    )
    assert _samples(first)[bucket] == 1


async def test_metrics_endpoint_serves_every_metric() -> None:
    consensus = LocalConsensus()
    await consensus.start()
    _seed(consensus)
    metrics = Metrics(consensus.store, consensus)
    metrics.observe("grpc", "ListServices", 0.001)
    runner = await start_metrics(metrics, "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            assert response.status == 200
            assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
            text = await response.text()
    finally:
        await runner.cleanup()
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text
    assert "\nwarren_raft_is_leader 1.0\n" in text
    assert "\nwarren_services_total 2.0\n" in text
