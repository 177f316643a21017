"""RaftConsensus with one real member: leadership, writes, and durability across restarts."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from factories import make_service
from support import eventually

from warren.core.errors import Unavailable
from warren.manager.consensus import Member
from warren.manager.raft import RaftConsensus
from warren.manager.store import (
    MUST_NOT_EXIST,
    Kind,
    Store,
    barrier,
    put,
    raise_for_result,
    txn,
)

REPO = Path(__file__).resolve().parents[2]


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def _create(consensus: RaftConsensus, name: str) -> str:
    service = make_service(name, id=f"svc-{name}")
    raise_for_result(await consensus.propose(txn([put(service, MUST_NOT_EXIST)], at=time.time())))
    return service.id


class Member1:
    """Starts one-member Raft instances on a fixed address and data dir; stops them all."""

    def __init__(self, data_dir: Path) -> None:
        self.address = _free_address()
        self.data_dir = data_dir
        self.running: list[RaftConsensus] = []

    async def start(self) -> RaftConsensus:
        consensus = RaftConsensus(Store(), self.address, self.data_dir)
        self.running.append(consensus)
        await consensus.start()
        await eventually(lambda: consensus.is_leader, 5.0, "a leader to be elected")
        return consensus

    async def stop_all(self) -> None:
        for consensus in self.running:
            await consensus.stop()


@pytest.fixture
async def raft(tmp_path: Path) -> AsyncIterator[Member1]:
    member = Member1(tmp_path / "raft")
    try:
        yield member
    finally:
        await member.stop_all()


async def test_a_single_member_leads_and_lists_itself(raft: Member1) -> None:
    leadership: list[bool] = []
    consensus = RaftConsensus(Store(), raft.address, raft.data_dir)
    consensus.on_leadership_change(leadership.append)
    raft.running.append(consensus)
    await consensus.start()
    await eventually(lambda: consensus.is_leader, 5.0, "a leader to be elected")
    assert consensus.leader == raft.address
    assert consensus.members() == [Member(raft.address, is_leader=True, reachable=True)]
    # The listener runs on the loop, a moment after the Raft thread changed state.
    deadline = time.monotonic() + 1.0
    while not leadership and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert leadership == [True]


async def test_writes_are_applied_when_propose_returns(raft: Member1) -> None:
    consensus = await raft.start()
    before = consensus.last_log_index
    service_id = await _create(consensus, "web")
    assert consensus.store.get(Kind.SERVICE, service_id).spec.name == "web"
    await _create(consensus, "db")
    assert consensus.last_log_index >= before + 2
    result = await consensus.propose(barrier())
    assert result == {"revision": 2}


async def test_a_refused_write_comes_back_as_an_error_result(raft: Member1) -> None:
    consensus = await raft.start()
    await _create(consensus, "web")
    result = await consensus.propose(
        txn([put(make_service("web", id="svc-web"), MUST_NOT_EXIST)], at=time.time())
    )
    assert result["error"] == "already_exists"


async def test_propose_without_a_running_raft_is_unavailable(raft: Member1) -> None:
    consensus = RaftConsensus(Store(), raft.address, raft.data_dir)
    with pytest.raises(Unavailable):
        await consensus.propose(barrier())
    assert consensus.members() == []
    assert consensus.last_log_index == 0
    assert not consensus.is_leader


async def test_acknowledged_writes_survive_a_restart(raft: Member1) -> None:
    first = await raft.start()
    ids = [await _create(first, f"s{i}") for i in range(20)]
    before = first.store.snapshot()
    await first.stop()
    assert not first.is_leader
    with pytest.raises(Unavailable):
        await first.propose(barrier())

    second = await raft.start()
    assert await second.propose(barrier()) == {"revision": 20}
    assert {s.id for s in second.store.list(Kind.SERVICE)} == set(ids)
    assert second.store.snapshot() == before


_CHILD = """
import asyncio, sys, time
from pathlib import Path

from warren.core.models import ContainerSpec, Service, ServiceSpec
from warren.manager.raft import RaftConsensus
from warren.manager.store import MUST_NOT_EXIST, Store, put, raise_for_result, txn


async def main(address, data_dir, count):
    consensus = RaftConsensus(Store(), address, Path(data_dir))
    await consensus.start()
    while not consensus.is_leader:
        await asyncio.sleep(0.01)
    for i in range(count):
        spec = ServiceSpec(name=f"s{i}", container=ContainerSpec(image="x"))
        service = Service(id=f"svc-{i:04d}", spec=spec)
        command = txn([put(service, MUST_NOT_EXIST)], at=time.time())
        raise_for_result(await consensus.propose(command))
        print(service.id, flush=True)  # acknowledged
    await asyncio.sleep(60)  # the parent kills us long before


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_every_acknowledged_write_survives_sigkill(raft: Member1, tmp_path: Path) -> None:
    total, kill_after = 200, 40
    stderr = (tmp_path / "child.stderr").open("w")
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        raft.address,
        str(raft.data_dir),
        str(total),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        while len(acknowledged) < kill_after:
            line = await asyncio.wait_for(child.stdout.readline(), timeout=8.0)
            assert line, f"child exited early: {(tmp_path / 'child.stderr').read_text()}"
            acknowledged.append(line.decode().strip())
        child.send_signal(signal.SIGKILL)
        # Lines already written before the kill were acknowledged too.
        rest = await asyncio.wait_for(child.stdout.read(), timeout=5.0)
        acknowledged.extend(rest.decode().split())
        assert await child.wait() == -signal.SIGKILL
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        stderr.close()
    assert kill_after <= len(acknowledged) < total, "the kill did not land mid-way"

    consensus = await raft.start()
    await consensus.propose(barrier())
    stored = {s.id for s in consensus.store.list(Kind.SERVICE)}
    assert set(acknowledged) <= stored
    # Nothing beyond what the child sent, and nothing out of order.
    assert stored == {f"svc-{i:04d}" for i in range(len(stored))}
