"""A register client for the linearizability test, run inside the lab's "client" host
(``python register_client.py --config-dir D --manager HOST:PORT``): one JSON command a
line on stdin, one JSON answer a line on stdout, until stdin closes.

A register is a service; its value is the service's env REG (unique per write), so a
compare on the service's version is a compare on the value.

- ``{"op": "create", "key": K, "value": X}``: the register's service, REG=X ->
  ``{"outcome": "ok"}``
- ``{"op": "read", "key": K}``: a linearizable read, the call ``warren --consistent
  service inspect K`` makes (GetService with the consistency metadata) ->
  ``{"outcome": "ok", "value": REG, "version": V}``
- ``{"op": "cas", "key": K, "version": V, "new": X}``: REG becomes X if the service is
  still at version V (UpdateService carrying V, also with the consistency metadata, as
  ``warren --consistent service update`` sends it) -> ``{"outcome": "ok", "swapped":
  true}``, or ``false`` when refused with a conflict (the version moved on).

Anything else is ``"unknown"`` (a timeout or an unreachable manager: it may have taken
effect) or ``"fail"`` (refused as invalid: it certainly did nothing), with the error.
Each command gets a new client, as each CLI command does, so a client never drifts to
another manager (nor waits out a dead channel's reconnect backoff).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IMAGE = "app:v1"


def spec(key: str, value: str) -> Any:
    from warren.core.models import ContainerSpec, ServiceSpec

    # No replicas: nothing but the API ever writes these services.
    return ServiceSpec(
        name=key, container=ContainerSpec(image=IMAGE, env={"REG": value}), replicas=0
    )


def perform(args: argparse.Namespace, command: dict[str, Any]) -> dict[str, Any]:
    from warren.cli.client import WarrenClient
    from warren.cli.config import admin_identity
    from warren.core.errors import Conflict, InvalidArgument

    identity = admin_identity(Path(args.config_dir))
    try:
        with WarrenClient([args.manager], identity, args.timeout, linearizable=True) as client:
            if command["op"] == "create":
                client.create_service(spec(command["key"], command["value"]))
                return {"outcome": "ok"}
            if command["op"] == "read":
                service = client.get_service(command["key"])
                return {
                    "outcome": "ok",
                    "value": service.spec.container.env.get("REG"),
                    "version": service.version,
                }
            version = int(command["version"])
            if version <= 0:  # 0 would mean "whatever the version"
                raise InvalidArgument(f"a compare-and-swap needs a version, not {version}")
            try:
                client.update_service(command["key"], spec(command["key"], command["new"]), version)
            except Conflict as exc:
                return {"outcome": "ok", "swapped": False, "error": str(exc)}
            return {"outcome": "ok", "swapped": True}
    except InvalidArgument as exc:
        return {"outcome": "fail", "error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # the op may or may not have happened
        return {"outcome": "unknown", "error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="register_client.py")
    parser.add_argument("--config-dir", required=True, help="holds the admin identity")
    parser.add_argument("--manager", required=True, help="HOST:PORT of the one manager to use")
    parser.add_argument("--timeout", type=float, default=3.0, help="per call, seconds")
    args = parser.parse_args(argv)
    for line in sys.stdin:
        answer = perform(args, json.loads(line))
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
