"""The etcd member a manager runs, with the real etcd over loopback.

Every etcd a test starts has its data under the test's tmp_path; the
``members`` fixture stops the members and then SIGKILLs any process whose
command line names that tmp_path, so nothing outlives a test, pass or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import ssl
import stat
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import eventually

from warren.core.errors import Unavailable
from warren.manager.etcd import member as member_module
from warren.manager.etcd.member import EtcdMember, MemberConfig, free_loopback_port
from warren.security.ca import CertificateAuthority, generate_key, key_pem
from warren.security.etcd_peer import issue_etcd_peer_certificate

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FAST = (0.0, 0.05, 0.05, 0.05, 0.05)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("etcd-test")


@dataclass
class Members:
    """Builds members under ``root`` and keeps them for the teardown."""

    root: Path
    ca: CertificateAuthority
    started: list[EtcdMember] = field(default_factory=list)

    def configs(self, count: int, **changes: Any) -> list[MemberConfig]:
        """``count`` members of one new cluster on loopback."""
        addresses = [f"127.0.0.1:{free_loopback_port()}" for _ in range(count)]
        configs = []
        for i, address in enumerate(addresses):
            key = generate_key()
            values: dict[str, Any] = {
                "name": address,
                "data_dir": self.root / f"m{i + 1}" / "etcd",
                "peer_address": address,
                "listen_peer": address,
                "initial_cluster": {a: a for a in addresses},
                "initial_state": "new",
                "cluster_token": "warren-test",
                "ca_pem": self.ca.cert_pem,
                "cert_pem": issue_etcd_peer_certificate(self.ca, key, "127.0.0.1"),
                "key_pem": key_pem(key),
            }
            values.update(changes)
            configs.append(MemberConfig(**values))
        return configs

    def member(self, config: MemberConfig, **kwargs: Any) -> EtcdMember:
        member = EtcdMember(config, **kwargs)
        self.started.append(member)
        return member

    async def cluster(self, count: int, **kwargs: Any) -> list[EtcdMember]:
        members = [self.member(c, **kwargs) for c in self.configs(count)]
        await asyncio.gather(*(m.start() for m in members))
        return members


def _pids_naming(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return [pid for pid in pids if pid != os.getpid()]


def _alive(pid: int) -> bool:
    """Running (a zombie has died: only its exit status is left)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture
async def members(
    tmp_path: Path, ca: CertificateAuthority, request: pytest.FixtureRequest
) -> AsyncIterator[Members]:
    kit = Members(tmp_path, ca)
    try:
        yield kit
    finally:
        report = getattr(request.node, "rep_call", None)
        for member in kit.started:
            if report is not None and report.failed:
                print(f"--- {member.config.name}: {member_module.log_tail(member.paths.log, 20)}")
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await member.stop()
        # Whatever else was started under this test's dir (a child's etcd,
        # one a failed stop left behind).
        for pid in _pids_naming(str(tmp_path)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def etcdctl(member: EtcdMember, *args: str) -> str:
    """etcdctl against ``member``'s client endpoint with its certificate."""
    paths = member.paths
    argv = [
        "etcdctl",
        "--endpoints", f"https://{member.client_endpoint}",
        "--cacert", str(paths.ca),
        "--cert", str(paths.cert),
        "--key", str(paths.key),
        "--dial-timeout", "2s",
        "--command-timeout", "3s",
        *args,
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, "ETCDCTL_API": "3"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(10):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode:
        raise AssertionError(f"etcdctl {' '.join(args)}: {err.decode().strip()}")
    return out.decode()


async def status(member: EtcdMember) -> dict[str, Any]:
    """``endpoint status`` of the member: member_id, leader, raft_term, revision..."""
    entry = json.loads(await etcdctl(member, "endpoint", "status", "-w", "json"))[0]
    status: dict[str, Any] = entry["Status"]
    return {"member_id": status["header"]["member_id"], **status}


async def agreed_leader(members: list[EtcdMember]) -> int | None:
    """The leader every member names, once they all name the same one."""
    try:
        leaders = {(await status(m))["leader"] for m in members}
    except AssertionError:
        return None
    return leaders.pop() if len(leaders) == 1 and 0 not in leaders else None


async def value_of(member: EtcdMember, key: str) -> str | None:
    try:
        return (await etcdctl(member, "get", "--print-value-only", key)).strip()
    except AssertionError:
        return None


# -- starting and answering ----------------------------------------------------------


async def test_a_one_member_cluster_starts_and_answers(members: Members) -> None:
    (config,) = members.configs(1)
    member = members.member(config)

    await member.start()

    assert member.running
    host, _, port = member.client_endpoint.partition(":")
    assert host == "127.0.0.1" and port.isdigit()
    assert member.client_tls == (config.ca_pem, config.cert_pem, config.key_pem)
    pid = member.pid
    assert pid is not None
    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    assert Path(argv0.decode()).name == "etcd"
    await eventually(lambda: agreed_leader([member]), 10, "a leader")
    await etcdctl(member, "put", "greeting", "hello")
    assert await value_of(member, "greeting") == "hello"

    await member.stop()
    assert not member.running and member.pid is None
    assert not _alive(pid)
    await member.stop()  # idempotent


async def test_three_members_form_a_cluster_over_tls(members: Members) -> None:
    cluster = await members.cluster(3)

    leader = await eventually(lambda: agreed_leader(cluster), 15, "one leader for all three")
    listed = json.loads(await etcdctl(cluster[0], "member", "list", "-w", "json"))["members"]
    assert sorted(m["name"] for m in listed) == sorted(m.config.name for m in cluster)
    assert all(url.startswith("https://") for m in listed for url in m["peerURLs"])
    assert leader in {m["ID"] for m in listed}

    await etcdctl(cluster[0], "put", "written-on", "the first member")
    assert await value_of(cluster[2], "written-on") == "the first member"


async def test_a_member_restarting_alone_starts_without_a_quorum(members: Members) -> None:
    cluster = await members.cluster(3)
    await eventually(lambda: agreed_leader(cluster), 15, "one leader for all three")
    await etcdctl(cluster[0], "put", "kept", "yes")
    for member in cluster:  # one by one: etcd stops all at once slowly (leadership transfer)
        await member.stop()

    # Alone it has no quorum (its client port serves nothing yet), but it has
    # loaded its data and waits for its peers: started as far as we can tell.
    async with asyncio.timeout(10):
        await cluster[0].start()
    assert cluster[0].running

    await asyncio.gather(cluster[1].start(), cluster[2].start())
    await eventually(lambda: agreed_leader(cluster), 15, "one leader again")
    assert await value_of(cluster[0], "kept") == "yes"


# -- supervision -------------------------------------------------------------------------


async def test_a_killed_member_is_restarted_and_rejoins_with_its_data(
    members: Members, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="warren.manager.etcd.member")
    cluster = await members.cluster(3)
    leader = await eventually(lambda: agreed_leader(cluster), 15, "one leader for all three")
    # A follower: the other two keep their leader, so writes go on meanwhile.
    victim, writer = [m for m in cluster if (await status(m))["member_id"] != leader][:2]
    await etcdctl(writer, "put", "before", "1")
    await eventually(lambda: value_of(victim, "before"), 5, "the key on the victim")
    member_id = (await status(victim))["member_id"]
    endpoint, old_pid = victim.client_endpoint, victim.pid
    assert old_pid is not None

    os.kill(old_pid, signal.SIGKILL)
    await etcdctl(writer, "put", "during", "2")  # two of three: still a quorum

    await eventually(lambda: victim.running and victim.pid != old_pid, 10, "a new etcd")
    assert victim.client_endpoint == endpoint
    assert await eventually(lambda: value_of(victim, "during"), 15, "the rejoined member") == "2"
    assert await value_of(victim, "before") == "1"
    assert (await status(victim))["member_id"] == member_id  # the same member, not a new one
    restarts = [r.getMessage() for r in caplog.records if "restarting it" in r.getMessage()]
    assert len(restarts) == 1 and "SIGKILL" in restarts[0]


async def test_the_client_port_moves_only_when_it_is_taken(members: Members) -> None:
    (config,) = members.configs(1)
    # Time to take the port before the supervisor restarts etcd.
    member = members.member(config, restart_delays=(5.0, 0.5, 0.5, 0.5, 0.5))
    await member.start()
    old_endpoint, old_pid = member.client_endpoint, member.pid
    assert old_pid is not None
    squatter = socket.socket()
    try:
        os.kill(old_pid, signal.SIGKILL)
        await eventually(lambda: not _alive(old_pid), 5, "the old etcd gone")
        # SO_REUSEADDR: connections of the old etcd may linger in TIME_WAIT.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", int(old_endpoint.rpartition(":")[2])))
        squatter.listen()
        await eventually(lambda: member.running and member.pid != old_pid, 20, "a new etcd")
    finally:
        squatter.close()
    assert member.client_endpoint != old_endpoint
    await eventually(lambda: agreed_leader([member]), 10, "the member serving on its new port")


async def test_a_client_port_taken_as_etcd_starts_is_replaced(
    members: Members, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="warren.manager.etcd.member")
    (config,) = members.configs(1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        # The first pick loses the race for its port; the next one is free.
        picks = iter([taken])
        real_pick = member_module.free_loopback_port
        monkeypatch.setattr(member_module, "free_loopback_port", lambda: next(picks, real_pick()))
        member = members.member(config)

        await member.start()

    assert member.client_endpoint != f"127.0.0.1:{taken}"
    assert f"client port {taken} was taken" in caplog.text
    await eventually(lambda: agreed_leader([member]), 10, "the member serving")


async def test_a_member_failing_again_and_again_is_given_up_once(
    members: Members, tmp_path: Path
) -> None:
    # Runs etcd the first time, then fails at once like a broken member would.
    wrapper = tmp_path / "etcd-once"
    wrapper.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        runs=$(cat {tmp_path}/runs 2>/dev/null || echo 0)
        echo $((runs + 1)) > {tmp_path}/runs
        [ "$runs" -eq 0 ] && exec etcd "$@"
        echo "broken on purpose" >&2
        exit 3
        """)
    )
    wrapper.chmod(0o755)
    reasons: list[str] = []
    (config,) = members.configs(1)
    member = members.member(
        config, binary=str(wrapper), on_fatal=reasons.append, restart_delays=FAST
    )
    await member.start()
    pid = member.pid
    assert pid is not None

    os.kill(pid, signal.SIGKILL)

    await eventually(lambda: reasons, 10, "on_fatal")
    assert "exited with code 3" in reasons[0] and "broken on purpose" in reasons[0]
    assert (tmp_path / "runs").read_text().strip() == "6"  # the first run and five restarts
    await asyncio.sleep(0.5)
    assert len(reasons) == 1
    assert not member.running


# -- dying with the manager --------------------------------------------------------------

_MANAGER = """
import asyncio, sys
from pathlib import Path
from warren.manager.etcd.member import EtcdMember, MemberConfig, free_loopback_port
from warren.security.ca import CertificateAuthority, generate_key, key_pem
from warren.security.etcd_peer import issue_etcd_peer_certificate

async def main() -> None:
    ca = CertificateAuthority.create("pdeathsig")
    key = generate_key()
    address = f"127.0.0.1:{free_loopback_port()}"
    member = EtcdMember(MemberConfig(
        name=address, data_dir=Path(sys.argv[1]), peer_address=address, listen_peer=address,
        initial_cluster={address: address}, initial_state="new", cluster_token="t",
        ca_pem=ca.cert_pem, cert_pem=issue_etcd_peer_certificate(ca, key, "127.0.0.1"),
        key_pem=key_pem(key),
    ))
    await member.start()
    print(member.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_the_member_dies_with_a_killed_manager(members: Members, tmp_path: Path) -> None:
    script = tmp_path / "manager.py"
    script.write_text(_MANAGER)
    manager = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(tmp_path / "etcd"),
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert manager.stdout is not None
        async with asyncio.timeout(30):
            line = await manager.stdout.readline()
        etcd_pid = int(line)
        assert _alive(etcd_pid)
        assert str(tmp_path) in Path(f"/proc/{etcd_pid}/cmdline").read_text()

        manager.kill()  # SIGKILL: the manager cleans up nothing
        await manager.wait()

        await eventually(lambda: not _alive(etcd_pid), 2.0, "etcd gone with its manager")
    finally:
        if manager.returncode is None:
            manager.kill()
            await manager.wait()


# -- certificates ---------------------------------------------------------------------------


def _request(port: int, ca_pem: bytes, cert: Path, key: Path, path: str) -> bytes:
    """GET ``path`` over mutual TLS; b"" when the server closes without a reply."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.check_hostname = False
    context.load_cert_chain(cert, key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n".encode())
        # Up to the end of the body: etcd's peer port does not close at once.
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
            head, found, body = reply.partition(b"\r\n\r\n")
            if found and len(body) >= _content_length(head):
                break
        return reply


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62  # no length: read to the end


async def _answer(port: int, ca_pem: bytes, identity: tuple[Path, Path], path: str) -> str:
    """ "answered" with a 200, else how the connection ended."""
    try:
        reply = await asyncio.to_thread(_request, port, ca_pem, *identity, path)
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused ({exc})"
    return "answered" if reply.startswith(b"HTTP/1.1 200") else f"refused ({reply[:80]!r})"


def _identity(
    tmp_path: Path, ca: CertificateAuthority, name: str, role: str, sans: list[str]
) -> tuple[Path, Path]:
    key = generate_key()
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"
    cert_path.write_bytes(ca.issue_for_key(key.public_key(), name, role, sans))
    key_path.write_bytes(key_pem(key))
    return cert_path, key_path


async def test_only_the_etcd_certificate_opens_the_member_ports(
    members: Members, tmp_path: Path, ca: CertificateAuthority
) -> None:
    (config,) = members.configs(1)
    member = members.member(config)
    await member.start()
    await eventually(lambda: agreed_leader([member]), 10, "a leader")
    peer_port = int(config.listen_peer.rpartition(":")[2])
    client_port = int(member.client_endpoint.rpartition(":")[2])
    etcd = (member.paths.cert, member.paths.key)
    # Same CA, other names: a worker's, and a manager's that serves and names
    # 127.0.0.1 as well, so only its name sets it apart.
    worker = _identity(tmp_path, ca, "node-1", "worker", [])
    manager = _identity(tmp_path, ca, "node-2", "manager", ["127.0.0.1"])
    log_before = member.paths.log.read_text()

    assert await _answer(peer_port, ca.cert_pem, etcd, "/members") == "answered"
    assert await _answer(client_port, ca.cert_pem, etcd, "/version") == "answered"
    for identity in (worker, manager):
        for port, path in ((peer_port, "/members"), (client_port, "/version")):
            outcome = await _answer(port, ca.cert_pem, identity, path)
            assert outcome.startswith("refused"), (identity[0].name, port, outcome)

    # etcd says why: the certificate, not the request.
    rejections = [
        line
        for line in member.paths.log.read_text()[len(log_before) :].splitlines()
        if "rejected connection" in line
    ]
    assert len(rejections) == 4
    assert all("client certificate authentication failed" in line for line in rejections)


# -- files and failures to start -----------------------------------------------------------


async def test_the_member_dir_and_keys_are_private(members: Members) -> None:
    (config,) = members.configs(1)
    config.data_dir.mkdir(parents=True, mode=0o755)
    config.data_dir.chmod(0o755)
    member = members.member(config)
    await member.start()

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(config.data_dir) == 0o700
    assert mode(member.paths.data) == 0o700
    assert mode(member.paths.key.parent) == 0o700
    for path in (member.paths.key, member.paths.cert, member.paths.ca, member.paths.log):
        assert mode(path) == 0o600, path
    assert member.paths.key.read_bytes() == config.key_pem


async def test_an_etcd_that_exits_at_start_is_reported_with_its_log(
    members: Members, tmp_path: Path
) -> None:
    wrapper = tmp_path / "etcd-bad-flag"
    wrapper.write_text('#!/bin/sh\nexec etcd "$@" --no-such-flag\n')
    wrapper.chmod(0o755)
    (config,) = members.configs(1)
    member = members.member(config, binary=str(wrapper))

    with pytest.raises(Unavailable, match=r"while starting.*no-such-flag"):
        await member.start()
    assert not member.running
    assert not _pids_naming(str(tmp_path))


async def test_an_etcd_that_never_answers_times_out(
    members: Members, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(member_module, "START_TIMEOUT", 1.0)
    wrapper = tmp_path / "etcd-mute"
    wrapper.write_text(
        f"#!/bin/sh\necho 'mute on purpose' >&2\n"
        f'exec {sys.executable} -c "import time; time.sleep(60)" "$@"\n'
    )
    wrapper.chmod(0o755)
    (config,) = members.configs(1)
    member = members.member(config, binary=str(wrapper))

    with pytest.raises(Unavailable, match="did not answer within 1 s: mute on purpose"):
        await member.start()
    assert not _pids_naming(str(tmp_path))


async def test_a_peer_port_in_use_is_refused_before_etcd_starts(members: Members) -> None:
    first, second = members.configs(2)
    taken = members.member(first)
    await taken.start()
    clash = dataclasses.replace(second, listen_peer=first.listen_peer)
    with pytest.raises(Unavailable, match="in use"):
        await members.member(clash).start()
