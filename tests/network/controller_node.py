"""Runs the agent's network controller, with the real parts, inside a lab host.

Started by tests/network/test_network_controller.py with ``nsenter --net=...``
(the network namespace only: wireguard-go and the DNS sockets live there, the
mounts stay ours so /run/netns paths work). One JSON command a line on stdin,
one JSON reply a line on stdout; objects travel pickled (base64), as both
ends are this test::

    {"action": "start", "node_id": ..., "state_dir": ..., "interface": ..., "port": ...}
        -> {"public_key": ..., "mtu": ...}
    {"action": "view", "view": B64}          -> {"failures": {...}}
    {"action": "attach", "task": B64, "netns": PATH} -> {"nameserver": ..., "address": ...}
    {"action": "detach", "task_id": ...}     -> {}
    {"action": "resync", "tasks": B64}       -> {"failures": {...}}
    {"action": "stop"}                       -> {}  (an agent stopping; then the process ends)
    {"action": "close"}                      -> {}  (the node leaving; then the process ends)
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import pickle
import sys
from pathlib import Path
from typing import Any

from warren.agent.network.components import build_components
from warren.agent.network.controller import NetworkController
from warren.agent.network.dns import DnsSettings
from warren.core.errors import WarrenError


def _load(text: str) -> Any:
    return pickle.loads(base64.b64decode(text))


class Node:
    def __init__(self) -> None:
        self.controller: NetworkController | None = None

    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request["action"]
        if action == "start":
            components = await build_components(
                Path(request["state_dir"]),
                listen_port=request["port"],
                interface=request["interface"],
                dns_settings=DnsSettings(upstreams=()),
            )
            self.controller = components.controller(request["node_id"], view_wait=5.0)
            await self.controller.start()
            return {"public_key": components.mesh.key.public_key, "mtu": components.mtu}
        controller = self.controller
        assert controller is not None
        if action == "view":
            await controller.apply_view(_load(request["view"]))
            return {"failures": controller.failures}
        if action == "attach":
            names = await controller.attach(_load(request["task"]), request["netns"])
            return {"nameserver": names.nameserver, "address": names.address}
        if action == "detach":
            await controller.detach(request["task_id"])
            return {}
        if action == "resync":
            await controller.resync(_load(request["tasks"]))
            return {"failures": controller.failures}
        if action == "stop":
            await controller.stop()
            return {}
        if action == "close":
            await controller.close()
            return {}
        raise ValueError(f"unknown action {action!r}")


async def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    node = Node()
    loop = asyncio.get_running_loop()
    while True:
        # Read in a thread: the loop keeps serving DNS meanwhile.
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return 0
        request = json.loads(line)
        try:
            reply = await node.run(request)
        except WarrenError as err:
            reply = {"error": err.code, "message": err.message}
        print(json.dumps(reply), flush=True)
        if request["action"] in ("stop", "close"):
            return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
