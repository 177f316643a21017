from __future__ import annotations

from pathlib import Path

import pytest

from warren.agent.network.bridge import FakeBridgeNetwork
from warren.agent.sim import SimRuntime
from warren.core.doctor import CheckResult, DoctorRequest
from warren.core.errors import InvalidArgument
from warren.core.node_view import NetworkView, ViewNetwork, ViewPeer
from warren.node.networking import mesh_interface, network_parts
from warren.node.options import NodeOptions


def test_mesh_interfaces_are_per_node_and_fit_the_kernels_limit() -> None:
    names = {mesh_interface(node_id) for node_id in ("a1b2c3d4e5f6g7h8i9", "z9y8x7w6v5u4")}
    assert len(names) == 2
    assert all(name.startswith("warren-") and len(name) <= 15 for name in names)


@pytest.mark.parametrize(
    ("runtime", "plane", "kernel"),
    [
        ("containerd", "", True),
        ("containerd", "kernel", True),
        ("containerd", "sim", False),
        ("sim", "", False),
        ("sim", "sim", False),
    ],
)
def test_the_plane_follows_the_runtime_unless_told(runtime: str, plane: str, kernel: bool) -> None:
    options = NodeOptions(Path("/nonexistent"), runtime=runtime, network_plane=plane)
    assert options.kernel_network_plane is kernel


async def test_a_sim_plane_touches_nothing_and_publishes_no_identity(tmp_path: Path) -> None:
    options = NodeOptions(tmp_path / "data", runtime="containerd", network_plane="sim")
    networking = (await network_parts(options)).for_node("node-1")
    assert networking.identity is None
    assert isinstance(networking.controller.bridges, FakeBridgeNetwork)
    assert networking.controller.mesh_settings is None
    await networking.start()
    await networking.shutdown()
    assert not (tmp_path / "data").exists()  # no key, and no view yet to keep


async def test_the_kernel_plane_needs_real_containers(tmp_path: Path) -> None:
    options = NodeOptions(tmp_path, runtime="sim", network_plane="kernel")
    with pytest.raises(InvalidArgument, match="--runtime containerd"):
        await network_parts(options)


async def test_a_sim_plane_doctor_probes_nothing(tmp_path: Path) -> None:
    options = NodeOptions(tmp_path / "data", runtime="sim")
    networking = (await network_parts(options)).for_node("node-1")
    key = "w4ox46K1mDXOWl8pwiYNvCSVIhzRwFK38KRE95L6jD8="
    view = NetworkView(
        revision=3,
        networks=(ViewNetwork("net-1", "default", "10.32.0.0/16", ("10.32.64.0/24",)),),
        peers=(ViewPeer("node-2", key, "10.0.0.2:51820", ("10.32.65.0/24",)),),
    )
    await networking.start()
    try:
        await networking.controller.apply_view(view)
        report = await networking.doctor(SimRuntime())(DoctorRequest("r1"))
    finally:
        await networking.shutdown()
    assert len(report.checks) == 3  # handshake, round trip, path MTU to the peer
    for check in report.checks:
        assert (check.result, check.detail) == (
            CheckResult.SKIP,
            "simulated network plane: not probed",
        )
