"""The network doctor's real probes, on two lab hosts running the agent's network
controller with the real parts (see test_network_controller.py): from node 1,
the WireGuard handshake, round trip and path MTU to node 2, the service's name
asked from a local container's namespace, its VIP and its published ports
(ingress at 127.0.0.1, host mode at the node's gateway) are all OK; with node
2's end of the mesh gone, the round trip to it fails with a hint. Needs root,
ip, nft, nsenter and wireguard-go."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pickle
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from chaos import netlab

from network.test_network_controller import (
    SERVICE_PORT,
    WG_PORT,
    Containers,
    _dump,
    _nsenter,
    _task,
    lab,  # noqa: F401  (the fixture)
    pytestmark,  # noqa: F401  (the same requirements)
)
from network.wg_lab import wireguard_go_pids
from warren.agent.network.wg_uapi import SOCKET_DIR
from warren.core.doctor import CheckKind, CheckResult, DoctorReport
from warren.core.networks import PortConfig, PublishMode, VirtualIP
from warren.core.node_view import NetworkView, ViewEndpoint, ViewNetwork, ViewPeer, ViewService

NODE_SCRIPT = Path(__file__).with_name("doctor_node.py")
BLOCKS = {1: "10.50.1.0/24", 2: "10.50.2.0/24"}
VIP = "10.50.0.2"
PUBLISHED = 30090


class DoctorHost:
    """doctor_node.py in a host's namespace, driven over its stdin/stdout."""

    def __init__(self, host: netlab.Host, node_id: str, interface: str, state_dir: Path) -> None:
        self.node_id = node_id
        self.interface = interface
        self.state_dir = state_dir
        self.proc = subprocess.Popen(
            _nsenter(host.netns, [sys.executable, str(NODE_SCRIPT)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(state_dir.parent / f"{node_id}.log", "ab"),  # noqa: SIM115
            text=True,
            start_new_session=True,
        )

    def ask(self, action: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"action": action, **fields}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"{self.node_id} exited: see {self.state_dir.parent / self.node_id}.log"
        reply: dict[str, Any] = json.loads(line)
        assert "error" not in reply, f"{self.node_id} {action}: {reply}"
        return reply

    def doctor(self, namespaces: dict[str, str]) -> DoctorReport:
        reply = self.ask("doctor", namespaces=namespaces)
        report: DoctorReport = pickle.loads(base64.b64decode(reply["report"]))
        return report

    def stop_process(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def _view(hosts: list[netlab.Host], keys: list[str], index: int) -> NetworkView:
    front = ViewNetwork("net-front", "front", "10.50.0.0/16", (BLOCKS[index],))
    web = ViewService(
        "svc-web",
        "web",
        networks=("net-front",),
        vips=(VirtualIP("net-front", f"{VIP}/16"),),
        ports=(
            PortConfig(target=SERVICE_PORT, published=PUBLISHED),
            PortConfig(target=SERVICE_PORT, published=PUBLISHED + 1, mode=PublishMode.HOST),
        ),
        endpoints=(
            ViewEndpoint("t-web1", "node-1", "net-front", "10.50.1.10/24"),
            ViewEndpoint("t-web2", "node-2", "net-front", "10.50.2.10/24"),
        ),
    )
    peers = tuple(
        ViewPeer(f"node-{i}", key, f"{host.address}:{WG_PORT}", (BLOCKS[i],))
        for i, (host, key) in enumerate(zip(hosts, keys, strict=True), start=1)
    )
    return NetworkView(revision=1, networks=(front,), services=(web,), peers=peers)


def _summary(report: DoctorReport) -> list[tuple[str, str, str]]:
    return [(str(c.kind), c.target, str(c.result)) for c in report.checks]


def test_the_doctor_probes_the_mesh_dns_vip_and_published_port_for_real(
    lab: netlab.Lab,  # noqa: F811
    tmp_path: Path,
) -> None:
    hosts = [lab.add_host("d1"), lab.add_host("d2")]
    token = secrets.token_hex(3)
    nodes = [
        DoctorHost(host, f"node-{i}", f"wgd{token}{i}", tmp_path / f"state-{i}")
        for i, host in enumerate(hosts, start=1)
    ]
    containers = Containers(lab)
    try:
        keys = []
        for node in nodes:
            reply = node.ask(
                "start",
                node_id=node.node_id,
                state_dir=str(node.state_dir),
                interface=node.interface,
                port=WG_PORT,
            )
            keys.append(str(reply["public_key"]))
        for index, node in enumerate(nodes, start=1):
            view = _dump(_view(hosts, keys, index))
            assert node.ask("view", view=view)["failures"] == {}
        web1, web2, client = (containers.make(t) for t in ("d-web1", "d-web2", "d-client"))
        nodes[0].ask("attach", task=_dump(_task("t-web1", ("net-front", "10.50.1.10/24"))),
                     netns=str(netlab.NETNS_DIR / web1))  # fmt: skip
        # The doctor asks from a local task's namespace: the client's (a task that is
        # no endpoint of web, so its VIP connection never lands on itself).
        namespaces = {"t-client": str(netlab.NETNS_DIR / client)}
        nodes[0].ask("attach", task=_dump(_task("t-client", ("net-front", "10.50.1.20/24"))),
                     netns=namespaces["t-client"])  # fmt: skip
        nodes[1].ask("attach", task=_dump(_task("t-web2", ("net-front", "10.50.2.10/24"))),
                     netns=str(netlab.NETNS_DIR / web2))  # fmt: skip
        containers.serve(web1, "web1")
        containers.serve(web2, "web2")

        report = nodes[0].doctor(namespaces)
        assert [(c.target, c.detail) for c in report.checks if c.result is not CheckResult.OK] == []
        targets = [(kind, target) for kind, target, _ in _summary(report)]
        assert [kind for kind, _ in targets] == [
            "handshake",
            "round-trip",
            "path-mtu",
            "dns",
            "vip",
            "published",
            "published",
        ]
        assert ("dns", "web.front @ 10.50.1.1") in targets
        assert ("vip", f"web VIP {VIP}:{SERVICE_PORT}") in targets
        assert ("published", f"web 127.0.0.1:{PUBLISHED} (ingress)") in targets
        assert ("published", f"web 10.50.1.1:{PUBLISHED + 1} (host)") in targets
        dns = next(c for c in report.checks if c.kind is CheckKind.DNS)
        assert dns.detail == VIP

        # Node 2's end of the mesh goes: nothing crosses the tunnel any more.
        subprocess.run(["ip", "-n", hosts[1].netns, "link", "del", nodes[1].interface], check=True)
        broken = nodes[0].doctor(namespaces)
        round_trip = next(c for c in broken.checks if c.kind is CheckKind.ROUND_TRIP)
        assert round_trip.result is CheckResult.FAIL
        assert round_trip.detail.endswith("no answer within the timeout")
        assert "see its handshake row" in round_trip.hint
        path_mtu = next(c for c in broken.checks if c.kind is CheckKind.PATH_MTU)
        assert path_mtu.result is CheckResult.SKIP

        for node in nodes:
            node.ask("close")
    finally:
        for node in nodes:
            node.stop_process()
        containers.close()
        for pid in wireguard_go_pids([n.interface for n in nodes]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for node in nodes:  # a killed wireguard-go leaves its socket
            (SOCKET_DIR / f"{node.interface}.sock").unlink(missing_ok=True)
