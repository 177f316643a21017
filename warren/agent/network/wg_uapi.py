"""WireGuard's cross-platform UAPI (``set=1`` / ``get=1`` over a unix socket),
as ``wireguard-go`` serves it at ``/var/run/wireguard/<ifname>.sock``.

Written here rather than taken from PyPI's ``wireguard-tools``, which replaces
every peer on each set (dropping live sessions) and mis-encodes keys. Keys are
hex on this wire and base64 everywhere else in Warren.
"""

from __future__ import annotations

import base64
import errno
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from warren.agent.network.wireguard import (
    AddPeer,
    MeshPlan,
    PeerChange,
    PeerState,
    RemovePeer,
    UpdatePeer,
    public_key_of,
)
from warren.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    WarrenError,
)

SOCKET_DIR = Path("/var/run/wireguard")
TIMEOUT = 5.0
_MAX_REPLY = 16 * 1024 * 1024


def socket_path(name: str, directory: Path = SOCKET_DIR) -> Path:
    return directory / f"{name}.sock"


def key_to_hex(key: str) -> str:
    return base64.b64decode(key).hex()


def key_from_hex(text: str) -> str:
    raw = bytes.fromhex(text)
    if len(raw) != 32:
        raise ValueError(f"UAPI key of {len(raw)} bytes")
    return base64.b64encode(raw).decode()


# -- encoding a set --------------------------------------------------------------------


def encode_set(plan: MeshPlan) -> bytes | None:
    """The ``set=1`` request for a plan's WireGuard part, or None if it has none."""
    if not plan.touches_wireguard:
        return None
    lines = ["set=1"]
    if plan.private_key:
        lines.append(f"private_key={key_to_hex(plan.private_key)}")
    if plan.listen_port is not None:
        lines.append(f"listen_port={plan.listen_port}")
    for change in plan.peer_changes:
        lines += _peer_lines(change)
    return ("\n".join(lines) + "\n\n").encode()


def _peer_lines(change: PeerChange) -> list[str]:
    if isinstance(change, RemovePeer):
        return [f"public_key={key_to_hex(change.public_key)}", "remove=true"]
    if isinstance(change, AddPeer):
        peer = change.peer
        return [
            f"public_key={key_to_hex(peer.public_key)}",
            f"endpoint={peer.endpoint}",
            f"persistent_keepalive_interval={peer.persistent_keepalive}",
            "replace_allowed_ips=true",
            *(f"allowed_ip={net}" for net in peer.allowed_ips),
        ]
    return _update_lines(change)


def _update_lines(change: UpdatePeer) -> list[str]:
    # update_only: if the peer vanished meanwhile, do not bring it back half-made.
    lines = [f"public_key={key_to_hex(change.public_key)}", "update_only=true"]
    if change.endpoint is not None:
        lines.append(f"endpoint={change.endpoint}")
    if change.persistent_keepalive is not None:
        lines.append(f"persistent_keepalive_interval={change.persistent_keepalive}")
    if change.allowed_ips is not None:
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={net}" for net in change.allowed_ips]
    return lines


# -- parsing a get ---------------------------------------------------------------------


@dataclass(frozen=True)
class UapiDevice:
    """What ``get=1`` says: the device's public key and port, and its peers."""

    public_key: str
    listen_port: int
    peers: tuple[PeerState, ...]


def parse_get(text: str) -> UapiDevice:
    """Parse a ``get=1`` reply (without its ``errno`` line)."""
    public_key = ""
    listen_port = 0
    peers: list[dict[str, object]] = []
    for line in text.splitlines():
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"UAPI line without '=': {line!r}")
        if key == "public_key":
            peers.append({"public_key": key_from_hex(value), "allowed_ips": []})
        elif peers:
            _peer_field(peers[-1], key, value)
        elif key == "private_key":
            public_key = public_key_of(key_from_hex(value))
        elif key == "listen_port":
            listen_port = int(value)
    return UapiDevice(public_key, listen_port, tuple(_peer_state(p) for p in peers))


_NUMBERS = frozenset(
    (
        "last_handshake_time_sec",
        "last_handshake_time_nsec",
        "rx_bytes",
        "tx_bytes",
        "persistent_keepalive_interval",
    )
)


def _peer_field(peer: dict[str, object], key: str, value: str) -> None:
    if key == "allowed_ip":
        allowed = peer["allowed_ips"]
        assert isinstance(allowed, list)
        allowed.append(value)
    elif key in _NUMBERS:
        peer[key] = int(value)
    elif key == "endpoint":
        peer[key] = value


def _peer_state(fields: dict[str, object]) -> PeerState:
    def number(name: str) -> int:
        value = fields.get(name, 0)
        assert isinstance(value, int)
        return value

    allowed = fields["allowed_ips"]
    assert isinstance(allowed, list)
    endpoint = fields.get("endpoint")
    return PeerState(
        public_key=str(fields["public_key"]),
        endpoint=str(endpoint) if endpoint else None,
        allowed_ips=tuple(sorted(allowed)),
        persistent_keepalive=number("persistent_keepalive_interval"),
        last_handshake=number("last_handshake_time_sec") + number("last_handshake_time_nsec") / 1e9,
        rx_bytes=number("rx_bytes"),
        tx_bytes=number("tx_bytes"),
    )


# -- errors ----------------------------------------------------------------------------


def error_for_errno(code: int, name: str) -> WarrenError:
    """Warren's error for a UAPI ``errno=`` reply (wireguard-go sends it negated)."""
    code = abs(code)
    symbol = errno.errorcode.get(code, str(code))
    what = f"wireguard-go ({name}) refused the configuration: {os.strerror(code)} ({symbol})"
    if code in (errno.EINVAL, errno.EPROTO):
        return InvalidArgument(what)
    if code == errno.EADDRINUSE:
        return AlreadyExists(f"{what}: the listen port is taken")
    if code == errno.ENODEV:
        return FailedPrecondition(what)
    return Unavailable(what)


# -- the client ------------------------------------------------------------------------


class UapiClient:
    """Talks to one interface's UAPI socket; each call is one connection."""

    def __init__(self, name: str, directory: Path = SOCKET_DIR, timeout: float = TIMEOUT):
        self.name = name
        self.path = socket_path(name, directory)
        self.timeout = timeout

    def get(self) -> UapiDevice:
        reply = self._exchange(b"get=1\n\n")
        try:
            return parse_get(reply)
        except ValueError as err:
            raise Unavailable(
                f"wireguard-go ({self.name}) sent a reply Warren cannot read: {err}"
            ) from None

    def set(self, request: bytes) -> None:
        self._exchange(request)

    def server_pid(self) -> int:
        """The pid of the process serving the socket (its peer credentials)."""
        with self._connect() as sock:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, _uid, _gid = struct.unpack("3i", creds)
        return int(pid)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise Unavailable(
                f"wireguard-go for {self.name} is not running (nothing answers on {self.path})"
            ) from None
        except OSError as err:
            sock.close()
            raise Unavailable(f"cannot reach wireguard-go for {self.name}: {err}") from None
        return sock

    def _exchange(self, request: bytes) -> str:
        with self._connect() as sock:
            try:
                sock.sendall(request)
                reply = _read_reply(sock)
            except OSError as err:
                raise Unavailable(f"wireguard-go for {self.name} did not answer: {err}") from None
        body, code = _split_errno(reply)
        if code != 0:
            raise error_for_errno(code, self.name)
        return body


def _read_reply(sock: socket.socket) -> str:
    data = b""
    # A reply ends with an empty line; only the errno line comes right before it.
    while not (data.endswith(b"\n\n") and b"errno=" in data.rsplit(b"\n", 3)[-3]):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_REPLY:
            raise OSError("reply too long")
    return data.decode()


def _split_errno(reply: str) -> tuple[str, int]:
    lines = reply.rstrip("\n").split("\n")
    last = lines[-1] if lines else ""
    if not last.startswith("errno="):
        raise Unavailable(f"wireguard-go sent an incomplete reply ({len(reply)} bytes)")
    return "\n".join(lines[:-1]), int(last.removeprefix("errno="))
