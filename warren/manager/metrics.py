"""Prometheus metrics: API latency, plus cluster gauges read from the store at scrape time.

Each ``Metrics`` owns its registry (never the process-global one), so several
managers can live in one process, as they do in tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from warren.core.models import NodeRole, NodeStatus
from warren.core.states import TaskState
from warren.manager.consensus import Consensus
from warren.manager.store import Kind, Store

# From a cached read (well under a millisecond) to a slow consensus write.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    def __init__(self, store: Store, consensus: Consensus) -> None:
        self.registry = CollectorRegistry()
        self.api_latency = Histogram(
            "warren_api_request_duration_seconds",
            "Time spent handling an API request",
            ["api", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(ClusterCollector(store, consensus))

    def observe(self, api: str, method: str, seconds: float) -> None:
        self.api_latency.labels(api=api, method=method).observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return bytes(generate_latest(self.registry))


class ClusterCollector:
    """Gauges computed from the store on every scrape, so they can never drift."""

    def __init__(self, store: Store, consensus: Consensus) -> None:
        self._store = store
        self._consensus = consensus

    def describe(self) -> list[Any]:
        # Names only: registering must not read the store.
        return list(self._families())

    def collect(self) -> Iterator[Any]:
        nodes, services, tasks = self._families()
        _add_node_counts(nodes, self._store)
        services.add_metric([], len(self._store.list(Kind.SERVICE)))
        _add_task_counts(tasks, self._store)
        leader = GaugeMetricFamily(
            "warren_raft_is_leader", "1 if this manager is the Raft leader, else 0"
        )
        leader.add_metric([], 1 if self._consensus.is_leader else 0)
        index = GaugeMetricFamily(
            "warren_raft_last_log_index", "Index of the last entry in this manager's Raft log"
        )
        index.add_metric([], self._consensus.last_log_index)
        yield from (nodes, services, tasks, leader, index)

    @staticmethod
    def _families() -> tuple[Any, Any, Any]:
        return (
            GaugeMetricFamily(
                "warren_nodes_total", "Nodes by role and status", labels=["role", "status"]
            ),
            GaugeMetricFamily("warren_services_total", "Services in the cluster"),
            GaugeMetricFamily("warren_tasks_total", "Tasks by observed state", labels=["state"]),
        )


def _add_node_counts(family: Any, store: Store) -> None:
    counts = Counter((node.role, node.status) for node in store.list(Kind.NODE))
    # Every combination, zeros included, so series do not vanish and reappear.
    for role in NodeRole:
        for status in NodeStatus:
            family.add_metric([role.value, status.value], counts[(role, status)])


def _add_task_counts(family: Any, store: Store) -> None:
    counts = Counter(task.status.state for task in store.list(Kind.TASK))
    for state in TaskState:
        family.add_metric([state.value], counts[state])


async def start_metrics(metrics: Metrics, host: str, port: int) -> web.AppRunner:
    """Serve ``GET /metrics`` over plain HTTP; the caller cleans up the runner."""

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
