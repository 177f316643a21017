"""The etcd member a manager runs: its arguments, its process, and its supervision.

Each manager runs one etcd member as a child process (Debian's etcd 3.4). The
member talks to its peers over mutual TLS on the manager's Raft address and
serves clients on a loopback port only: the one client is the manager itself.
The child dies with the manager (PR_SET_PDEATHSIG), and is restarted on the
same data while the manager runs, up to ``MAX_RESTARTS`` times a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from warren.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from warren.security.ca import ETCD_PEER_COMMON_NAME
from warren.security.tls import write_private

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
STOP_GRACE = 5.0
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
# Waits before the 1st..5th restart in a window: an immediate first try, then
# room for a passing cause (a port in use, a full disk) to clear.
RESTART_DELAYS = (0.0, 0.5, 1.0, 2.0, 4.0)
MAX_REQUEST_BYTES = 32 * 1024 * 1024
# etcd 3.4 keeps this many Raft entries in memory before snapshotting; its
# default (100,000) holds many state images at once. 10,000 is 3.6's default.
SNAPSHOT_COUNT = 10_000
# etcd.log is set aside at a start when it has grown past this.
LOG_ROTATE_BYTES = 16 * 1024 * 1024
_LOG_TAIL_LINES = 6
_PROBE_TIMEOUT = 1.0
_PROBE_PERIOD = 0.1
_CLIENT_PORT_TRIES = 3
_STATES = ("new", "existing")


@dataclass(frozen=True, kw_only=True)
class MemberConfig:
    """One member. Addresses are "host:port" (IPv6 hosts in brackets)."""

    name: str  # the manager's Raft address
    data_dir: Path  # the member's own dir (0700): etcd's data, its log, its TLS files
    peer_address: str  # where peers reach it
    listen_peer: str  # what it binds for peers (an IP address, 0.0.0.0 allowed)
    initial_cluster: Mapping[str, str]  # member name -> peer address, itself included
    initial_state: str  # "new" or "existing"; read only on the first start
    cluster_token: str
    ca_pem: bytes
    cert_pem: bytes  # warren.security.etcd_peer: serves, dials peers, and is the client's
    key_pem: bytes
    heartbeat_ms: int = 50
    election_ms: int = 500

    def __post_init__(self) -> None:
        if self.initial_state not in _STATES:
            raise InvalidArgument(f"initial cluster state must be one of {', '.join(_STATES)}")
        for name, address in self.initial_cluster.items():
            # --initial-cluster is "name=url,name=url".
            if not name or any(c in name for c in ",= \t\n"):
                raise InvalidArgument(f"invalid etcd member name '{name}'")
            split_host_port(address)
        if self.initial_cluster.get(self.name) != self.peer_address:
            raise InvalidArgument(
                f"the initial cluster must name this member ({self.name}) at {self.peer_address}"
            )
        host, _port = split_host_port(self.listen_peer)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise InvalidArgument(f"etcd binds IP addresses only, not '{host}'") from None
        if not self.cluster_token:
            raise InvalidArgument("the etcd cluster token must not be empty")
        # etcd itself refuses an election timeout under five heartbeats.
        if self.heartbeat_ms <= 0 or self.election_ms < 5 * self.heartbeat_ms:
            raise InvalidArgument("the election timeout must be at least five heartbeats")


@dataclass(frozen=True)
class MemberPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "etcd.log"

    @property
    def ca(self) -> Path:
        return self.root / "tls" / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.root / "tls" / "cert.pem"

    @property
    def key(self) -> Path:
        return self.root / "tls" / "key.pem"


def split_host_port(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6]:port"."""
    host, sep, port = address.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    unbracketed_v6 = ":" in bare and bare == host
    if not sep or not bare or unbracketed_v6 or not port.isdigit():
        raise InvalidArgument(f"invalid address '{address}' (expected host:port)")
    if not 0 < int(port) < 65536:
        raise InvalidArgument(f"invalid port in '{address}'")
    return bare, int(port)


def member_args(config: MemberConfig, client_port: int) -> list[str]:
    """etcd's command line (without the binary) for ``config`` serving clients
    on 127.0.0.1:``client_port``."""
    paths = MemberPaths(config.data_dir)
    client_url = f"https://127.0.0.1:{client_port}"
    cluster = ",".join(
        f"{name}=https://{address}" for name, address in sorted(config.initial_cluster.items())
    )
    # fmt: off
    return [
        "--name", config.name,
        "--data-dir", str(paths.data),
        "--listen-peer-urls", f"https://{config.listen_peer}",
        "--initial-advertise-peer-urls", f"https://{config.peer_address}",
        # The manager is the only client: loopback only.
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        # Read on the first start only; later starts resume from the data dir.
        "--initial-cluster", cluster,
        "--initial-cluster-state", config.initial_state,
        "--initial-cluster-token", config.cluster_token,
        "--heartbeat-interval", str(config.heartbeat_ms),
        "--election-timeout", str(config.election_ms),
        # A member back from a partition does not depose a working leader.
        "--pre-vote=true",
        "--client-cert-auth=true",
        "--trusted-ca-file", str(paths.ca),
        "--cert-file", str(paths.cert),
        "--key-file", str(paths.key),
        # Only the etcd certificate opens the client port, not a manager's,
        # worker's or admin's from the same CA (which could otherwise write
        # around the store's checks).
        "--client-cert-allowed-hostname", ETCD_PEER_COMMON_NAME,
        # Warren speaks gRPC. With an allowed hostname etcd 3.4's HTTP/JSON
        # gateway (/v3/...) cannot dial its own gRPC server and would log so
        # every few minutes; /version and /health are served without it.
        "--enable-grpc-gateway=false",
        "--peer-client-cert-auth=true",
        "--peer-trusted-ca-file", str(paths.ca),
        "--peer-cert-file", str(paths.cert),
        "--peer-key-file", str(paths.key),
        "--peer-cert-allowed-cn", ETCD_PEER_COMMON_NAME,
        # TLS 1.2 suites (TLS 1.3 has only strong ones): forward secrecy and
        # AEAD only, for the ECDSA keys Warren's CA issues.
        "--cipher-suites", ",".join(_CIPHER_SUITES),
        "--max-request-bytes", str(MAX_REQUEST_BYTES),
        "--snapshot-count", str(SNAPSHOT_COUNT),
        # No --auto-compaction-*: the consensus compacts the log itself, only
        # behind a state image that covers what it removes.
        "--logger", "zap",
        "--log-outputs", str(paths.log),
        "--enable-v2=false",
    ]
    # fmt: on


_CIPHER_SUITES = (
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
)


# The child gets SIGKILL when its parent dies, even by SIGKILL: set by
# util-linux's setpriv just before it execs etcd. Not a preexec_fn: that makes
# Python fork() instead of vfork(), and gRPC's fork handlers then abort the
# child of a process with live gRPC channels ("Check failed: next_worker->state
# == KICKED"). The signal follows the thread that spawned it (the event loop's).
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "SIGKILL", "--")


def etcd_env() -> dict[str, str]:
    # etcd reads ETCD_* variables as flags (and ETCDCTL_* are for etcdctl):
    # whatever the manager's environment holds must not change the member.
    return {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` now (with SO_REUSEADDR, as etcd binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, since: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """What etcd.log says past byte ``since`` (where a run began), shortened:
    its last error lines, then its last lines, zap's JSON as level, message
    and error (a refused flag is followed by pages of usage, a panic by its
    stack, so the last lines alone may not say what went wrong)."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(since, end - 256 * 1024))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no etcd.log)"
    shown = [_short(line) for line in text.splitlines() if line.strip()]
    errors = [line for line, error in shown if error][-_LOG_ERROR_LINES:]
    excerpt = errors + [line for line, _error in shown[-lines:] if line not in errors]
    return " | ".join(excerpt) or "(nothing in etcd.log)"


_LOG_ERROR_LINES = 3
_ZAP_ERRORS = {"error", "dpanic", "panic", "fatal"}
# What etcd writes outside zap that says what failed: Go's flag parsing (the
# usage text after it mentions errors too, hence the anchors), Go panics.
_RAW_ERROR = re.compile(
    r"^(panic:|fatal error:|\w+: error)|flag provided but not defined|invalid value .* for flag"
)


def _short(line: str) -> tuple[str, bool]:
    """A log line shortened, and whether it reports an error."""
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        return line.strip()[:300], bool(_RAW_ERROR.search(line))
    level = str(entry.get("level", ""))
    parts = [level, str(entry.get("msg", ""))]
    if "error" in entry:
        parts.append(f"error={entry['error']}")
    return " ".join(p for p in parts if p)[:300], level in _ZAP_ERRORS


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class EtcdMember:
    """One etcd member process, supervised.

    ``on_fatal(reason)`` is called once when the member keeps failing (more
    than ``MAX_RESTARTS`` exits in ``RESTART_WINDOW`` seconds); it is then left
    down.
    """

    def __init__(
        self,
        config: MemberConfig,
        binary: str = "etcd",
        on_fatal: Callable[[str], None] | None = None,
        *,
        restart_delays: Sequence[float] = RESTART_DELAYS,
    ) -> None:
        if len(restart_delays) != MAX_RESTARTS:
            raise InvalidArgument(f"give a delay for each of the {MAX_RESTARTS} restarts")
        self.config = config
        self.paths = MemberPaths(config.data_dir)
        self._binary = binary
        self._on_fatal = on_fatal
        self._restart_delays = tuple(restart_delays)
        self._client_port: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._spawn_failure = ""
        self._log_offset = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._restarts: list[float] = []
        self._stopping = False
        self._fatal = False
        self._lock = asyncio.Lock()

    # -- what the manager's client needs ------------------------------------------

    @property
    def client_endpoint(self) -> str:
        """Where the member serves clients, "127.0.0.1:port". A restart by the
        supervisor keeps the port unless another process took it meanwhile."""
        if self._client_port is None:
            raise FailedPrecondition("the etcd member has not been started")
        return f"127.0.0.1:{self._client_port}"

    @property
    def client_tls(self) -> tuple[bytes, bytes, bytes]:
        """(CA, certificate, key) PEM for a client of this member."""
        return self.config.ca_pem, self.config.cert_pem, self.config.key_pem

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the member and return once it answers.

        It answers on its peer port: in etcd 3.4 the client port serves
        nothing until the member has published itself through Raft, which
        takes a quorum, and a member restarting alone must still start. The
        peer port answers once etcd has loaded its data and listens on both.
        """
        async with self._lock:
            if self.running:
                raise FailedPrecondition(f"etcd member {self.config.name} is already running")
            self._stopping = False
            self._fatal = False
            self._restarts = []
            await asyncio.to_thread(self._prepare)
            listen_host, listen_port = split_host_port(self.config.listen_peer)
            if not port_free(listen_host, listen_port):
                raise Unavailable(
                    f"etcd member {self.config.name} cannot listen on {self.config.listen_peer}:"
                    " the port is in use (is another etcd or manager running?)"
                )
            proc = await self._start_on_a_free_port()
            log.info(
                "etcd member %s started (pid %d, clients on %s)",
                self.config.name,
                proc.pid,
                self.client_endpoint,
            )
            self._supervisor = asyncio.create_task(
                self._supervise(), name=f"etcd-member-{self.config.name}"
            )

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds. Idempotent."""
        async with self._lock:
            self._stopping = True
            supervisor, self._supervisor = self._supervisor, None
            if supervisor is not None:
                supervisor.cancel()
                # asyncio.wait: the supervisor's cancellation is not ours to raise.
                await asyncio.wait([supervisor])
            proc, self._proc = self._proc, None
            if proc is not None:
                await _terminate(proc, STOP_GRACE)
                log.info("etcd member %s stopped", self.config.name)

    # -- internals ---------------------------------------------------------------------

    async def _start_on_a_free_port(self) -> asyncio.subprocess.Process:
        for attempt in range(1, _CLIENT_PORT_TRIES + 1):
            self._client_port = free_loopback_port()
            proc = await self._spawn(self._client_port)
            try:
                await self._until_answering(proc)
                return proc
            except Unavailable:
                exited = proc.returncode is not None
                await _terminate(proc, grace=0.0)
                self._proc = None
                # Another process took the port between our pick and etcd's bind.
                taken = exited and not port_free("127.0.0.1", self._client_port)
                if not taken or attempt == _CLIENT_PORT_TRIES:
                    raise
                log.warning(
                    "etcd member %s: client port %d was taken as etcd started; trying another",
                    self.config.name,
                    self._client_port,
                )
            except BaseException:
                await _terminate(proc, grace=0.0)
                self._proc = None
                raise
        raise AssertionError("unreachable")

    def _prepare(self) -> None:
        root = self.config.data_dir
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # also when it existed with looser bits
        # Written at every start: a renewed certificate takes effect on restart.
        write_private(self.paths.ca, self.config.ca_pem)
        write_private(self.paths.key, self.config.key_pem)
        write_private(self.paths.cert, self.config.cert_pem)
        with contextlib.suppress(FileNotFoundError):
            if self.paths.log.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.paths.log, self.paths.log.with_name("etcd.log.1"))

    async def _spawn(self, client_port: int) -> asyncio.subprocess.Process:
        binary = shutil.which(self._binary)
        if binary is None:
            raise FailedPrecondition(
                f"etcd binary '{self._binary}' not found (Debian package etcd-server)"
            )
        argv = [*DIE_WITH_PARENT, binary, *member_args(self.config, client_port)]
        # etcd's own log goes to the same file (zap appends); its stderr
        # carries what zap does not (gRPC warnings, a Go panic).
        fd = os.open(self.paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        # Where this run's lines begin: errors quote them, not an earlier run's.
        self._log_offset = os.fstat(fd).st_size
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=etcd_env(),
                # Its own session: a Ctrl-C meant for the manager reaches the
                # member only through the manager's orderly stop.
                start_new_session=True,
            )
        except OSError as exc:
            raise Unavailable(f"cannot start etcd ({self._binary}): {exc}") from None
        finally:
            os.close(fd)
        self._proc = proc
        return proc

    async def _until_answering(self, proc: asyncio.subprocess.Process) -> None:
        context = self._probe_context()
        host, port = split_host_port(self.config.listen_peer)
        if ipaddress.ip_address(host).is_unspecified:
            host = "::1" if ":" in host else "127.0.0.1"
        name = self.config.name
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    if proc.returncode is not None:
                        raise Unavailable(
                            f"etcd member {name} {_exit_text(proc.returncode)} while starting: "
                            f"{log_tail(self.paths.log, self._log_offset)}"
                        )
                    if await _answers_version(host, port, context):
                        return
                    await asyncio.sleep(_PROBE_PERIOD)
        except TimeoutError:
            raise Unavailable(
                f"etcd member {name} did not answer within {START_TIMEOUT:.0f} s: "
                f"{log_tail(self.paths.log, self._log_offset)}"
            ) from None

    def _probe_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.config.ca_pem.decode())
        # The CA and our own certificate are what matter here: the bound
        # address need not be one the certificate names.
        context.check_hostname = False
        context.load_cert_chain(self.paths.cert, self.paths.key)
        return context

    async def _supervise(self) -> None:
        while True:
            reason = await self._exited()
            if self._stopping:
                return
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW]
            if len(self._restarts) >= MAX_RESTARTS:
                self._give_up(
                    f"etcd member {self.config.name} failed {MAX_RESTARTS + 1} times within "
                    f"{RESTART_WINDOW:.0f} s; the last time it {reason}"
                )
                return
            self._restarts.append(now)
            delay = self._restart_delays[len(self._restarts) - 1]
            log.warning(
                "etcd member %s %s; restarting it in %.1f s (restart %d of %d within %.0f s)",
                self.config.name,
                reason,
                delay,
                len(self._restarts),
                MAX_RESTARTS,
                RESTART_WINDOW,
            )
            await asyncio.sleep(delay)
            await self._respawn()

    async def _exited(self) -> str:
        proc = self._proc
        if proc is None:
            return self._spawn_failure
        code = await proc.wait()
        return f"{_exit_text(code)}: {log_tail(self.paths.log, self._log_offset)}"

    async def _respawn(self) -> None:
        assert self._client_port is not None
        if not port_free("127.0.0.1", self._client_port):
            port = free_loopback_port()
            log.warning(
                "etcd member %s: client port %d is taken; using %d",
                self.config.name,
                self._client_port,
                port,
            )
            self._client_port = port
        try:
            proc = await self._spawn(self._client_port)
        except (FailedPrecondition, Unavailable) as exc:
            self._proc = None
            self._spawn_failure = f"could not be started again ({exc})"
            return
        log.info("etcd member %s restarted (pid %d)", self.config.name, proc.pid)

    def _give_up(self, reason: str) -> None:
        log.error("%s: giving up", reason)
        if self._fatal:
            return
        self._fatal = True
        if self._on_fatal is not None:
            try:
                self._on_fatal(reason)
            except Exception:
                log.exception("etcd member %s: on_fatal failed", self.config.name)


async def _answers_version(host: str, port: int, context: ssl.SSLContext) -> bool:
    """Whether etcd answers GET /version on host:port (HTTP/1.1 over TLS)."""
    request = f"GET /version HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host
            )
            writer.write(request)
            await writer.drain()
            # Head and body by their length: etcd's peer port keeps the
            # connection open for seconds despite "Connection: close".
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(_content_length(head))
    except (OSError, TimeoutError, EOFError, ValueError, asyncio.LimitOverrunError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(_PROBE_TIMEOUT):
                    await writer.wait_closed()
    return head.startswith(b"HTTP/1.1 200") and b'"etcdserver"' in body


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            if 0 <= length <= 64 * 1024:
                return length
    raise ValueError("no usable Content-Length")


async def _terminate(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM, up to ``grace`` seconds, then SIGKILL; the process is reaped."""
    if proc.returncode is not None:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        try:
            async with asyncio.timeout(grace if grace > 0 else None):
                await proc.wait()
            return
        except TimeoutError:
            log.warning(
                "etcd (pid %d) still running %.0f s after SIGTERM: killing it", proc.pid, grace
            )
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    except BaseException:
        # Cancelled while waiting: it must not outlive us all the same.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
