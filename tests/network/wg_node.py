"""Runs Warren's WireGuard mesh code inside a lab host's network namespace.

The tests and the benchmark start it with ``nsenter --net=/run/netns/NAME`` (the
network namespace only, so wireguard-go runs there too and its socket is where
every namespace sees it). One JSON request as the argument, one JSON reply on
stdout::

    {"action": "sync", "config": {...InterfaceConfig...}, "peers": [{...Peer...}]}
    {"action": "state", "config": {...}}
    {"action": "down", "config": {...}}
    {"action": "missing"}
    {"action": "mtu", "target": "10.0.0.2"}
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from warren.agent.network.wg_devices import missing_requirements, select_device
from warren.agent.network.wg_link import egress_mtu
from warren.agent.network.wireguard import InterfaceConfig, Mesh, Peer, mesh_mtu
from warren.core.errors import WarrenError


def run(request: dict[str, Any]) -> dict[str, Any]:
    if request["action"] == "missing":
        return {"missing": missing_requirements()}
    if request["action"] == "mtu":
        egress = egress_mtu(request["target"])
        return {"egress": egress, "mesh": mesh_mtu(egress)}
    mesh = Mesh(select_device(), InterfaceConfig(**request["config"]))
    if request["action"] == "sync":
        peers = [Peer(**{**p, "allowed_ips": tuple(p["allowed_ips"])}) for p in request["peers"]]
        plan = mesh.sync(peers)
        return {"changes": len(plan.peer_changes), "routes_added": list(plan.routes_to_add)}
    if request["action"] == "state":
        return {"state": dataclasses.asdict(mesh.state()), "device": type(mesh.device).__name__}
    if request["action"] == "down":
        mesh.close()
        return {}
    raise ValueError(f"unknown action {request['action']!r}")


def main() -> int:
    try:
        reply = run(json.loads(sys.argv[1]))
    except WarrenError as err:
        reply = {"error": err.code, "message": err.message}
    print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
