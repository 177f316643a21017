"""controller_node.py with one more action, the network doctor with the real probes::

{"action": "doctor", "namespaces": {TASK_ID: NETNS_PATH}, "service": NAME}
    -> {"report": B64}  (a pickled DoctorReport)
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import pickle
import sys
from typing import Any

from controller_node import Node  # beside this script

from warren.agent.network.doctor import doctor_for
from warren.core.doctor import DoctorRequest
from warren.core.errors import WarrenError


class DoctorNode(Node):
    async def run(self, request: dict[str, Any]) -> dict[str, Any]:
        if request["action"] != "doctor":
            return await super().run(request)
        assert self.controller is not None
        namespaces: dict[str, str] = request["namespaces"]
        doctor = doctor_for(self.controller, namespaces.get, simulated=False)
        report = await doctor(DoctorRequest("lab", request.get("service", "")))
        return {"report": base64.b64encode(pickle.dumps(report)).decode()}


async def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    node = DoctorNode()
    loop = asyncio.get_running_loop()
    while True:
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
