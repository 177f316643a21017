"""``python -m warren.devtools``: the quick start's local registry and containerd.

Both commands print one line once ready (the image reference, the socket path),
then run until SIGTERM or SIGINT and clean up after themselves.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from warren.devtools._proc import DaemonError
from warren.devtools.containerd import LocalContainerd
from warren.devtools.image import build_busybox_image
from warren.devtools.registry import LocalRegistry

TAG = "busybox:latest"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stopping = _stop_on_signals()
    try:
        command: Callable[[argparse.Namespace, threading.Event], int] = args.command
        return command(args, stopping)
    except DaemonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m warren.devtools")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve = commands.add_parser("serve-image", help="serve a busybox image from a local registry")
    serve.add_argument("--dir", type=Path, required=True, help="image and registry storage")
    serve.add_argument("--port", type=int, default=5000, help="registry port on 127.0.0.1")
    serve.set_defaults(command=_serve_image)
    ctd = commands.add_parser("containerd", help="run a private containerd rooted at --dir")
    ctd.add_argument("--dir", type=Path, required=True, help="root, state, socket and log")
    ctd.set_defaults(command=_containerd)
    return parser


def _stop_on_signals() -> threading.Event:
    stopping = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stopping


def _serve_image(args: argparse.Namespace, stopping: threading.Event) -> int:
    directory: Path = args.dir
    archive = build_busybox_image(directory / "busybox-oci.tar", TAG)
    with LocalRegistry(storage=directory / "registry", port=args.port) as registry:
        print(registry.push_archive(archive, TAG), flush=True)
        return _run_until(stopping, registry.running)


def _containerd(args: argparse.Namespace, stopping: threading.Event) -> int:
    with LocalContainerd(args.dir) as containerd:
        print(containerd.socket, flush=True)
        return _run_until(stopping, containerd.running)


def _run_until(stopping: threading.Event, alive: Callable[[], bool]) -> int:
    """Wait for a stop signal; exit 1 if the daemon dies first."""
    while not stopping.wait(timeout=1.0):
        if not alive():
            print("error: the daemon exited; see its log", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
