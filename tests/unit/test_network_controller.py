"""The agent's network controller (controller.py) and the executor's hook, on fakes:
FakeBridgeNetwork, the nftables proxy on FakePacketFilter, FakeDnsServer, the fake
WireGuard device, and the sim runtime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from factories import make_task
from support import eventually

from warren.agent.containerd.hostfiles import write_host_files
from warren.agent.executor import TaskExecutor
from warren.agent.network.bridge import FakeBridgeNetwork
from warren.agent.network.controller import (
    MeshSettings,
    NetworkController,
    resolve_peer_endpoints,
)
from warren.agent.network.dns import FakeDnsServer
from warren.agent.network.dns_view import QTYPE_A, Outcome
from warren.agent.network.nftables import FakePacketFilter, ServiceProxy
from warren.agent.network.view_mapping import data_plane, mesh_addresses
from warren.agent.network.wg_fake import FakeDevice
from warren.agent.network.wireguard import (
    NodeKey,
    generate_private_key,
    public_key_of,
)
from warren.agent.runtime import ContainerConfig, ContainerNames, ContainerState
from warren.agent.sim import SIM_NETNS_DIR, SimRuntime
from warren.core.errors import FailedPrecondition, InvalidArgument, RuntimeFailure
from warren.core.models import NetworkMode, Task, TaskStatus
from warren.core.networks import NetworkAttachment, PortConfig, VirtualIP
from warren.core.node_view import NetworkView, ViewEndpoint, ViewNetwork, ViewPeer, ViewService
from warren.core.states import TaskState

ME, OTHER = "node-1", "node-2"
IFACE = "wgtest0"
FRONT = ViewNetwork("net-front", "front", "10.32.0.0/16", blocks=("10.32.64.0/24",))
BACK = ViewNetwork("net-back", "back", "10.33.0.0/16", blocks=("10.33.64.0/24",))
OTHER_KEY = public_key_of(generate_private_key())
PEER = ViewPeer(OTHER, OTHER_KEY, "192.0.2.2:51820", ("10.32.65.0/24",))
WEB = ViewService(
    "svc-web",
    "web",
    networks=("net-front",),
    vips=(VirtualIP("net-front", "10.32.0.2/16"),),
    ports=(PortConfig(target=80, published=8080),),
    endpoints=(
        ViewEndpoint("t1", ME, "net-front", "10.32.64.2/24"),
        ViewEndpoint("t2", OTHER, "net-front", "10.32.65.2/24"),
    ),
)
VIEW = NetworkView(revision=3, networks=(FRONT, BACK), services=(WEB,), peers=(PEER,))


@dataclass
class Parts:
    device_key: str
    bridges: FakeBridgeNetwork
    packet_filter: FakePacketFilter
    proxy: ServiceProxy
    dns: FakeDnsServer
    device: FakeDevice
    controller: NetworkController


def _parts(view_wait: float = 1.0, retry_interval: float = 60.0) -> Parts:
    bridges, packet_filter, dns, device = (
        FakeBridgeNetwork(),
        FakePacketFilter(),
        FakeDnsServer(),
        FakeDevice(),
    )
    proxy = ServiceProxy(packet_filter)
    private = generate_private_key()
    mesh = MeshSettings(device, NodeKey(private, public_key_of(private)), IFACE, 51820)
    controller = NetworkController(
        ME,
        bridges,
        proxy,
        dns,
        mesh,
        mtu=1400,
        view_wait=view_wait,
        retry_interval=retry_interval,
    )
    return Parts(mesh.key.public_key, bridges, packet_filter, proxy, dns, device, controller)


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    made = _parts()
    await made.controller.start()
    try:
        yield made
    finally:
        await made.controller.stop()


def _task(task_id: str, *attachments: tuple[str, str], host: bool = False) -> Task:
    task = make_task(id=task_id, node_id=ME)
    if host:
        container = replace(task.spec.container, network_mode=NetworkMode.HOST)
        task = replace(task, spec=replace(task.spec, container=container))
    return replace(task, networks=tuple(NetworkAttachment(n, a) for n, a in attachments))


# -- the view -------------------------------------------------------------------------


async def test_a_view_converges_bridges_table_dns_and_mesh(parts: Parts) -> None:
    await parts.controller.apply_view(VIEW)
    assert parts.controller.failures == {}
    assert set(parts.bridges.bridges) == {"net-front", "net-back"}
    assert str(parts.bridges.bridges["net-front"].network.gateway) == "10.32.64.1/24"
    assert parts.bridges.bridges["net-front"].network.mtu == 1400
    assert parts.proxy.programmed == data_plane(VIEW, ME)
    assert parts.packet_filter.table is not None
    assert parts.dns.listen_addresses == {"10.32.64.1", "10.33.64.1"}
    device = parts.device.interfaces[IFACE]
    addresses = mesh_addresses([(ME, parts.device_key), (OTHER, OTHER_KEY)])
    assert device.config.address == addresses[ME]
    assert device.config.mtu == 1400
    theirs = f"{addresses[OTHER]}/32"
    assert [(p.public_key, p.endpoint, set(p.allowed_ips)) for p in device.peers.values()] == [
        (OTHER_KEY, "192.0.2.2:51820", {"10.32.65.0/24", theirs})
    ]
    assert device.routes == {"10.32.65.0/24", theirs}


async def test_a_view_of_a_lower_revision_is_served_too(parts: Parts) -> None:
    # A cluster restored from a backup counts from an earlier revision.
    await parts.controller.apply_view(VIEW)
    restored = replace(VIEW, revision=2, networks=(FRONT,))
    await parts.controller.apply_view(restored)
    assert parts.controller.view == restored
    assert set(parts.bridges.bridges) == {"net-front"}


async def test_a_network_gone_from_the_view_loses_its_bridge(parts: Parts) -> None:
    await parts.controller.apply_view(VIEW)
    await parts.controller.apply_view(replace(VIEW, revision=4, networks=(FRONT,)))
    assert set(parts.bridges.bridges) == {"net-front"}
    assert parts.dns.listen_addresses == {"10.32.64.1"}


async def test_a_failing_part_is_logged_the_others_converge_and_the_next_view_retries(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    parts.packet_filter.fail_next = RuntimeFailure("nft: no such table")
    with caplog.at_level(logging.WARNING):
        await parts.controller.apply_view(VIEW)
    assert "nftables" in parts.controller.failures
    assert "nftables failed: nft: no such table" in caplog.text
    assert parts.dns.listen_addresses == {"10.32.64.1", "10.33.64.1"}
    assert IFACE in parts.device.interfaces
    await parts.controller.apply_view(replace(VIEW, revision=4))
    assert parts.controller.failures == {}
    assert parts.proxy.programmed is not None


async def test_the_retry_loop_converges_a_part_that_failed() -> None:
    made = _parts(retry_interval=0.05)
    await made.controller.start()
    try:
        made.packet_filter.fail_next = RuntimeFailure("busy")
        await made.controller.apply_view(VIEW)
        assert made.proxy.programmed is None
        await eventually(lambda: made.proxy.programmed is not None, 2.0, "a retried sync")
        assert made.controller.failures == {}
    finally:
        await made.controller.stop()


async def test_receive_view_returns_at_once_and_serves_the_last(parts: Parts) -> None:
    served: list[int] = []
    apply = parts.controller.apply_view

    async def recording(view: NetworkView) -> None:
        served.append(view.revision)
        await apply(view)

    parts.controller.apply_view = recording  # type: ignore[method-assign]
    for revision in (4, 5, 6):
        await parts.controller.receive_view(replace(VIEW, revision=revision))
    assert served == []  # nothing served yet: the handler only handed them over
    await eventually(lambda: served and served[-1] == 6, 2.0, "view 6 served")
    assert served == [6]  # 4 and 5 were replaced before their turn
    assert set(parts.bridges.bridges) == {"net-front", "net-back"}


async def test_the_mesh_keeps_its_address_and_session_as_blocks_change(parts: Parts) -> None:
    await parts.controller.apply_view(VIEW)
    address = parts.device.interfaces[IFACE].config.address
    await parts.controller.apply_view(replace(VIEW, revision=4, networks=(BACK,)))
    assert parts.device.interfaces[IFACE].config.address == address
    assert ("delete", IFACE) not in parts.device.calls


async def test_a_node_without_blocks_is_in_the_mesh_too(parts: Parts) -> None:
    # A drained manager: no task, so no block, yet it forwards published ports.
    await parts.controller.apply_view(replace(VIEW, networks=(replace(FRONT, blocks=()),)))
    assert OTHER_KEY in parts.device.interfaces[IFACE].peers
    assert parts.controller.failures == {}


def test_peer_endpoint_names_are_resolved_to_addresses() -> None:
    notes: list[str] = []
    named = replace(PEER, endpoint="localhost:51820")
    bad = replace(PEER, node_id="node-3", endpoint="no-such-host.invalid:51820")
    view = resolve_peer_endpoints(replace(VIEW, peers=(PEER, named, bad)), notes)
    assert [p.endpoint for p in view.peers] == [
        "192.0.2.2:51820",
        "127.0.0.1:51820",
        "no-such-host.invalid:51820",
    ]
    assert len(notes) == 1 and "cannot resolve no-such-host.invalid" in notes[0]


# -- tasks --------------------------------------------------------------------------------


async def test_attach_plugs_a_task_in_and_its_names_go_to_the_gateway(parts: Parts) -> None:
    await parts.controller.apply_view(VIEW)
    task = _task("t1", ("net-back", "10.33.64.5/24"), ("net-front", "10.32.64.2/24"))
    names = await parts.controller.attach(task, "/run/netns/t1")
    assert (names.nameserver, names.address) == ("10.33.64.1", "10.33.64.5")
    attached = parts.bridges.attached["t1"]
    assert {n: str(i.address) for n, i in attached.items()} == {
        "net-back": "10.33.64.5/24",
        "net-front": "10.32.64.2/24",
    }
    assert [attached[n].ifname for n in ("net-back", "net-front")] == ["eth0", "eth1"]
    assert parts.bridges.bridges["net-back"].network.mtu == 1400
    # Its second network's subnet is routed via that network's gateway.
    assert parts.bridges.routes["t1"] == {("10.32.0.0/16", "10.32.64.1")}
    # The DNS knows it as a client of both networks.
    assert parts.dns.resolve("web", QTYPE_A, "10.33.64.5").addresses == ("10.32.0.2",)


async def test_attach_waits_for_a_view_that_serves_the_task(parts: Parts) -> None:
    task = _task("t1", ("net-front", "10.32.64.2/24"))
    attaching = asyncio.create_task(parts.controller.attach(task, "/run/netns/t1"))
    await asyncio.sleep(0.05)
    assert not attaching.done()
    await parts.controller.receive_view(VIEW)
    names = await asyncio.wait_for(attaching, 2.0)
    assert names.nameserver == "10.32.64.1"
    assert "t1" in parts.bridges.attached


async def test_attach_is_refused_when_no_view_serves_the_task_in_time() -> None:
    made = _parts(view_wait=0.05)
    await made.controller.apply_view(VIEW)
    task = _task("t1", ("net-front", "10.32.65.9/24"))  # another node's block
    with pytest.raises(FailedPrecondition, match="not served on this node"):
        await made.controller.attach(task, "/run/netns/t1")
    assert made.bridges.attached == {}


async def test_detach_removes_the_task_and_then_its_bridge_can_go(parts: Parts) -> None:
    await parts.controller.apply_view(VIEW)
    await parts.controller.attach(_task("t1", ("net-back", "10.33.64.5/24")), "/run/netns/t1")
    await parts.controller.apply_view(replace(VIEW, revision=4, networks=(FRONT,)))
    assert "net-back" in parts.bridges.bridges  # still used by t1
    await parts.controller.detach("t1")
    assert parts.bridges.attached == {}
    assert parts.dns.resolve("web", QTYPE_A, "10.33.64.5").outcome == Outcome.FORWARD
    await parts.controller.apply_view(replace(VIEW, revision=5, networks=(FRONT,)))
    assert set(parts.bridges.bridges) == {"net-front"}


async def test_resync_keeps_running_tasks_untouched_and_removes_the_rest(parts: Parts) -> None:
    await parts.controller.apply_view(VIEW)
    running = _task("t1", ("net-front", "10.32.64.2/24"))
    await parts.controller.attach(running, "/run/netns/t1")
    await parts.controller.attach(_task("t9", ("net-front", "10.32.64.9/24")), "/run/netns/t9")
    kept = parts.bridges.attached["t1"]
    made = parts.bridges.created
    # A new agent (a new controller over the same kernel state) learns what still runs.
    fresh = NetworkController(
        ME, parts.bridges, ServiceProxy(parts.packet_filter), parts.dns, None, mtu=1400
    )
    await fresh.apply_view(VIEW)
    await fresh.resync([running])
    assert set(parts.bridges.attached) == {"t1"}
    assert parts.bridges.attached["t1"] is kept
    assert parts.bridges.created == made
    assert parts.dns.resolve("web", QTYPE_A, "10.32.64.2").addresses == ("10.32.0.2",)


async def test_stop_leaves_the_data_plane_serving_close_removes_everything() -> None:
    made = _parts()
    await made.controller.start()
    await made.controller.apply_view(VIEW)
    await made.controller.attach(_task("t1", ("net-front", "10.32.64.2/24")), "/run/netns/t1")
    await made.controller.stop()
    assert not made.dns.started
    assert set(made.bridges.bridges) == {"net-front", "net-back"}
    assert "t1" in made.bridges.attached
    assert made.packet_filter.table is not None
    assert IFACE in made.device.interfaces
    await made.controller.close()
    assert made.bridges.bridges == {} and made.bridges.attached == {}
    assert made.packet_filter.table is None
    assert made.device.interfaces == {}
    assert made.dns.listen_addresses == frozenset()
    await made.controller.apply_view(replace(VIEW, revision=9))  # closed: nothing comes back
    assert made.bridges.bridges == {}


async def test_close_tries_every_part_and_says_which_failed() -> None:
    made = _parts()
    await made.controller.start()
    await made.controller.apply_view(VIEW)
    made.packet_filter.fail_next = RuntimeFailure("nft is gone")
    with pytest.raises(RuntimeFailure, match="nftables: nft is gone"):
        await made.controller.close()
    assert made.bridges.bridges == {}
    assert made.device.interfaces == {}


# -- the executor's hook -------------------------------------------------------------------


class Reports:
    def __init__(self) -> None:
        self.states: list[TaskState] = []
        self.last = TaskStatus()

    def __call__(self, task_id: str, status: TaskStatus) -> None:
        self.states.append(status.state)
        self.last = status


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[SimRuntime]:
    runtime = SimRuntime(netns_dir=tmp_path)
    try:
        yield runtime
    finally:
        await runtime.close()


async def _run(task: Task, runtime: SimRuntime, controller: NetworkController) -> TaskExecutor:
    reports = Reports()
    executor = TaskExecutor(task, runtime, reports, networking=controller)
    executor.start()
    await eventually(lambda: executor.state != TaskState.NEW and reports.states, 2.0, "a report")
    return executor


async def test_a_task_on_networks_is_attached_before_start_and_names_point_at_warren(
    parts: Parts, runtime: SimRuntime, tmp_path: Path
) -> None:
    await parts.controller.apply_view(VIEW)
    task = _task("t1", ("net-front", "10.32.64.2/24"))
    executor = await _run(task, runtime, parts.controller)
    try:
        await eventually(lambda: executor.state == TaskState.RUNNING, 2.0, "running")
        assert "t1" in parts.bridges.attached
        resolv = await runtime.exec("t1", ["cat", "/etc/resolv.conf"], 1.0)
        assert resolv.output.decode() == "nameserver 10.32.64.1\noptions ndots:0\n"
        hosts = await runtime.exec("t1", ["cat", "/etc/hosts"], 1.0)
        assert "10.32.64.2\tt1\n" in hosts.output.decode()
        assert runtime.network_namespace("t1") == str(tmp_path / "t1")
        runtime.kill("t1")
        await eventually(lambda: executor.done, 2.0, "the task to end")
        assert parts.bridges.attached == {}  # detached with the container's removal
    finally:
        await executor.close()


async def test_a_task_whose_networks_are_not_served_is_rejected_without_a_container(
    runtime: SimRuntime,
) -> None:
    made = _parts(view_wait=0.05)
    await made.controller.apply_view(VIEW)
    task = _task("t1", ("net-front", "10.32.65.9/24"))
    reports = Reports()
    executor = TaskExecutor(task, runtime, reports, networking=made.controller)
    executor.start()
    await eventually(lambda: executor.done, 2.0, "the task to end")
    assert executor.state == TaskState.REJECTED
    assert "not served on this node" in reports.last.err
    assert await runtime.list() == []
    assert made.bridges.attached == {}


async def test_an_attach_failure_removes_the_created_container(runtime: SimRuntime) -> None:
    made = _parts()
    await made.controller.apply_view(VIEW)

    async def broken(task: object) -> None:
        raise RuntimeFailure("netlink said no")

    made.bridges.attach = broken  # type: ignore[method-assign,assignment]
    reports = Reports()
    task = _task("t1", ("net-front", "10.32.64.2/24"))
    executor = TaskExecutor(task, runtime, reports, networking=made.controller)
    executor.start()
    await eventually(lambda: executor.done, 2.0, "the task to end")
    assert executor.state == TaskState.REJECTED
    assert "netlink said no" in reports.last.err
    assert await runtime.list() == []


async def test_host_networking_and_tasks_without_networks_are_left_alone(
    parts: Parts, runtime: SimRuntime
) -> None:
    await parts.controller.apply_view(VIEW)
    for task in (_task("t1", ("net-front", "10.32.64.2/24"), host=True), _task("t2")):
        executor = await _run(task, runtime, parts.controller)
        await eventually(lambda e=executor: e.state == TaskState.RUNNING, 2.0, "running")  # type: ignore[misc]
        info = await runtime.inspect(task.id)
        assert info.state == ContainerState.RUNNING
        await executor.close()
    assert parts.bridges.attached == {}


def test_a_container_on_host_networking_cannot_take_warrens_names() -> None:
    with pytest.raises(InvalidArgument, match="host networking"):
        ContainerConfig(
            "c1", "busybox", host_network=True, names=ContainerNames("10.0.0.1", "10.0.0.2")
        )


def test_the_containerd_name_files_point_at_warrens_dns(tmp_path: Path) -> None:
    directory = tmp_path / "containers" / "c1"
    names = ContainerNames("10.32.64.1", "10.32.64.2")
    files = write_host_files(directory, "c1", host_network=False, names=names)
    assert files.resolv_conf.read_text() == "nameserver 10.32.64.1\noptions ndots:0\n"
    assert "10.32.64.2\tc1\n" in files.hosts.read_text()
    assert files.hostname.read_text() == "c1\n"
    assert oct(files.resolv_conf.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("mtu", [1279, 65536])
def test_an_mtu_wireguard_cannot_carry_is_refused(mtu: int) -> None:
    with pytest.raises(InvalidArgument, match=f"network MTU {mtu} is outside 1280-65535"):
        NetworkController(ME, FakeBridgeNetwork(), ServiceProxy(FakePacketFilter()),
                          FakeDnsServer(), None, mtu=mtu)  # fmt: skip


async def test_the_next_agent_serves_the_kept_view_at_start(tmp_path: Path) -> None:
    kept = tmp_path / "network-view.json"
    first = _parts()
    first.controller.view_file = kept
    await first.controller.apply_view(VIEW)
    assert oct(kept.stat().st_mode & 0o777) == "0o600"
    await first.controller.attach(_task("t1", ("net-front", "10.32.64.2/24")), "/run/netns/t1")
    await first.controller.stop()  # a container still runs: the view is kept
    # A new agent, cut off from the managers: its DNS answers from the kept view.
    dns = FakeDnsServer()
    later = NetworkController(ME, FakeBridgeNetwork(), ServiceProxy(FakePacketFilter()), dns,
                              None, mtu=1400, view_file=kept)  # fmt: skip
    await later.start()
    try:
        assert later.view == VIEW
        assert dns.listen_addresses == {"10.32.64.1", "10.33.64.1"}
    finally:
        await later.close()
    assert not kept.exists()  # the node left: nothing of its view stays


async def test_an_unreadable_kept_view_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kept = tmp_path / "network-view.json"
    kept.write_text('{"revision": "not a number"}')
    made = NetworkController(ME, FakeBridgeNetwork(), ServiceProxy(FakePacketFilter()),
                             FakeDnsServer(), None, view_file=kept)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        await made.start()
    assert made.view is None
    assert "ignoring the kept network view" in caplog.text
    await made.stop()


async def test_a_task_in_a_second_block_gets_that_blocks_gateway(parts: Parts) -> None:
    two = replace(FRONT, blocks=("10.32.64.0/24", "10.32.100.0/24"))
    await parts.controller.apply_view(replace(VIEW, networks=(two, BACK)))
    assert parts.dns.listen_addresses == {"10.32.64.1", "10.32.100.1", "10.33.64.1"}
    task = _task("t1", ("net-front", "10.32.100.5/24"), ("net-back", "10.33.64.5/24"))
    names = await parts.controller.attach(task, "/run/netns/t1")
    assert (names.nameserver, names.address) == ("10.32.100.1", "10.32.100.5")
    assert parts.bridges.routes["t1"] == {("10.33.0.0/16", "10.33.64.1")}


async def test_stop_without_attached_tasks_removes_everything() -> None:
    made = _parts()
    await made.controller.start()
    await made.controller.apply_view(VIEW)
    await made.controller.attach(_task("t1", ("net-front", "10.32.64.2/24")), "/run/netns/t1")
    await made.controller.detach("t1")
    await made.controller.stop()
    assert made.bridges.bridges == {}
    assert made.packet_filter.table is None
    assert made.device.interfaces == {}
    assert not made.dns.started


async def test_the_sim_plane_runs_networked_tasks_on_the_default_sim_runtime() -> None:
    # What a node with the sim runtime composes: the controller over the fakes.
    runtime = SimRuntime()
    controller = NetworkController(ME, FakeBridgeNetwork(), ServiceProxy(FakePacketFilter()),
                                   FakeDnsServer(), None)  # fmt: skip
    await controller.apply_view(VIEW)
    executor = await _run(_task("t1", ("net-front", "10.32.64.2/24")), runtime, controller)
    try:
        await eventually(lambda: executor.state == TaskState.RUNNING, 2.0, "running")
        assert runtime.network_namespace("t1") == f"{SIM_NETNS_DIR}/t1"
        assert not Path(f"{SIM_NETNS_DIR}/t1").exists()  # notional: the sim makes none
        untouched = await _run(_task("t2"), runtime, controller)
        await eventually(lambda: untouched.state == TaskState.RUNNING, 2.0, "running")
        assert runtime.network_namespace("t2") is None
        await untouched.close()
    finally:
        await executor.close()
        await runtime.close()
