"""The network lab itself: reachability, partitions, link cuts, message faults (tc
netem, or nftables + htb where the kernel has no sch_netem), and leak-free teardown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import netlab
import pytest
from netlab import Host, Lab

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("_netlab_swept")]

PORT = 7411

# Answers every connection with "pong <its own address>".
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
while True:
    c, _ = s.accept()
    c.sendall(f"pong {sys.argv[1]}".encode())
    c.close()
"""

# Connects until it gets an answer or the window (seconds) is over; window 0 = one try.
CLIENT = """
import socket, sys, time
host, port, window = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + window
while True:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            print(s.recv(64).decode())
            sys.exit(0)
    except OSError as exc:
        if time.monotonic() >= deadline:
            print(exc, file=sys.stderr)
            sys.exit(1)
        time.sleep(0.1)
"""

# The quickest of a few TCP handshakes (connect() returns after the SYN-ACK), seconds.
RTT = """
import socket, sys, time
best = None
for _ in range(5):
    started = time.monotonic()
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5):
        taken = time.monotonic() - started
    best = taken if best is None else min(best, taken)
print(best)
"""

# Leaves a grandchild in a new session: it escapes killpg, only the netns sweep finds it.
ESCAPEE = """
import os, time
if os.fork() == 0:
    os.setsid()
    time.sleep(600)
"""


def serve(host: Host, tmp_path: Path, bind: str | None = None) -> subprocess.Popen[bytes]:
    bind = bind or host.address
    log = tmp_path / f"server-{host.name}-{bind}.log"
    return host.spawn([sys.executable, "-c", SERVER, bind, str(PORT)], log)


def reaches(src: Host, dst: Host | str, window: float = 0.0) -> bool:
    """Whether src gets a TCP answer from dst (an address or a serving host)."""
    address = dst if isinstance(dst, str) else dst.address
    result = src.run([sys.executable, "-c", CLIENT, address, str(PORT), str(window)])
    ok = result.returncode == 0
    if ok:
        assert result.stdout.strip() == f"pong {address}"
    return ok


def wait_reaches(src: Host, dst: Host | str) -> bool:
    # Generous window: covers server start-up and the link coming back.
    return reaches(src, dst, window=10.0)


def rtt(src: Host, dst: Host) -> float:
    result = src.run([sys.executable, "-c", RTT, dst.address, str(PORT)], check=True)
    return float(result.stdout)


def qdisc(host: Host) -> str:
    return host.run(["tc", "qdisc", "show", "dev", "eth0"], check=True).stdout


@pytest.fixture
def netem_ready(_netlab_swept: None) -> None:
    """Fail (or skip, with WARREN_SKIP_NETEM=1) where tc netem cannot run."""
    reason = netlab.netem_unavailable_reason()
    if reason is not None:
        if os.environ.get("WARREN_SKIP_NETEM") == "1":
            pytest.skip(reason)
        pytest.fail(f"{reason}; set WARREN_SKIP_NETEM=1 to skip", pytrace=False)


def nft_tables(host: Host) -> list[str]:
    return host.run(["nft", "list", "tables"], check=True).stdout.split("\n")


def test_hosts_reach_each_other_and_loopback(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    assert a.address != b.address
    assert lab.host("a") is a and a.netns == f"{lab.prefix}-a"
    serve(a, tmp_path)
    serve(b, tmp_path)
    serve(a, tmp_path, bind="127.0.0.1")
    assert wait_reaches(a, b)
    assert wait_reaches(b, a)
    assert wait_reaches(a, "127.0.0.1")
    # Loopback is per namespace: b has no server on its own 127.0.0.1.
    assert not reaches(b, "127.0.0.1")


def test_isolate_blocks_both_ways_and_heal_restores(lab: Lab, tmp_path: Path) -> None:
    a, b, c = (lab.add_host(n) for n in "abc")
    for host in (a, b, c):
        serve(host, tmp_path)
    assert wait_reaches(a, b) and wait_reaches(b, a) and wait_reaches(a, c)

    a.isolate(b)
    a.isolate(b)  # idempotent: still one table, same effect
    assert sum(lab.prefix in line for line in nft_tables(a)) == 1
    assert not reaches(a, b)
    assert not reaches(b, a)
    # Only the a<->b pair is cut.
    assert reaches(a, c) and reaches(c, a) and reaches(b, c) and reaches(c, b)

    a.isolate(c)  # cumulative
    assert not reaches(a, c) and not reaches(c, a) and not reaches(b, a)
    assert reaches(b, c)

    a.heal()
    a.heal()  # idempotent
    assert not any(lab.prefix in line for line in nft_tables(a))
    assert reaches(a, b) and reaches(b, a) and reaches(a, c) and reaches(c, a)


def test_link_down_cuts_host_from_everyone(lab: Lab, tmp_path: Path) -> None:
    a, b, c = (lab.add_host(n) for n in "abc")
    for host in (a, b, c):
        serve(host, tmp_path)
    assert wait_reaches(a, b) and wait_reaches(b, a) and wait_reaches(c, a)

    a.link_down()
    assert not reaches(a, b) and not reaches(b, a) and not reaches(c, a)
    assert reaches(b, c) and reaches(c, b)
    # Its own loopback still works.
    serve(a, tmp_path, bind="127.0.0.1")
    assert wait_reaches(a, "127.0.0.1")

    a.link_up()
    assert wait_reaches(a, b) and wait_reaches(b, a) and wait_reaches(c, a)


def _escapee_running(lab: Lab, host: Host) -> bool:
    # The server plus the escaped grandchild (its parent exits right away).
    ns_id = lab.namespace_ids[1 + lab.hosts.index(host)]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if len(netlab.pids_in_netns(ns_id)) >= 2:
            return True
        time.sleep(0.05)
    return False


def test_close_leaves_nothing(tmp_path: Path) -> None:
    lab = Lab()
    try:
        a, b = lab.add_host("a"), lab.add_host("b")
        server = serve(a, tmp_path)
        a.spawn([sys.executable, "-c", ESCAPEE], tmp_path / "escapee.log")
        assert _escapee_running(lab, a)
        a.isolate(b)
        assert any(lab.prefix in line for line in nft_tables(a))
        assert len(lab.namespace_ids) == 3
    finally:
        lab.close()
    assert server.poll() is not None
    assert lab.leftovers() == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lab.prefix not in listed
    lab.close()  # idempotent


def test_failing_body_still_cleans_up(tmp_path: Path) -> None:
    seen: dict[str, Lab] = {}

    def body() -> None:
        with Lab() as lab:
            seen["lab"] = lab
            a, b = lab.add_host("a"), lab.add_host("b")
            serve(a, tmp_path)
            a.spawn([sys.executable, "-c", ESCAPEE], tmp_path / "escapee.log")
            assert _escapee_running(lab, a)
            b.isolate(a)
            a.link_down()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        body()
    lab = seen["lab"]
    assert len(lab.namespace_ids) == 3
    assert lab.leftovers() == []


def test_kill_stops_process_group(lab: Lab, tmp_path: Path) -> None:
    a = lab.add_host("a")
    proc = serve(a, tmp_path)
    assert wait_reaches(a, a)
    a.kill(proc)
    assert proc.returncode == -9
    assert not reaches(a, a)


def test_sweep_removes_only_dead_owners_leftovers(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not os.path.exists(f"/proc/{dead.pid}")
    stale = f"{netlab.PREFIX_ROOT}-{dead.pid}-abcdef-x"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    sleeper = None
    try:
        sleeper = subprocess.Popen(
            ["ip", "netns", "exec", stale, "sleep", "600"], start_new_session=True
        )
        with Lab() as live:
            live.add_host("a")
            removed = netlab.sweep_stale()
            # Not `stale in removed`: a parallel session's sweep may have beaten us.
            assert not os.path.exists(f"/run/netns/{stale}")
            assert not any(name.startswith(live.prefix) for name in removed)
            assert live.leftovers() != []  # the live lab is untouched
        assert sleeper.wait(timeout=10) != 0
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        netlab.sweep_stale()


def test_rejects_bad_names() -> None:
    with pytest.raises(ValueError):
        Lab(prefix="1bad")
    with pytest.raises(ValueError):
        Lab(subnet="8.8.8.0/24")
    with Lab() as lab, pytest.raises(ValueError):
        lab.add_host("br")


# Counts what arrives on a UDP port until 2 s of silence: sequence numbers seen,
# duplicates, and arrivals after a higher number (reordering), as JSON.
UDP_COUNTER = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
open(sys.argv[3] + ".ready", "w").close()
s.settimeout(2)
seen = []
try:
    while True:
        seen.append(int(s.recv(200)))
except socket.timeout:
    pass
late = sum(1 for i, n in enumerate(seen) if i and n < max(seen[:i]))
json.dump({"unique": len(set(seen)), "dups": len(seen) - len(set(seen)), "late": late},
          open(sys.argv[3], "w"))
"""

# Ten at a time: held-back datagrams are overtaken by the rest of their ten
# however slowly the machine runs, and the receiver's buffer never overflows.
UDP_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n in range(int(sys.argv[3])):
    s.sendto(str(n).encode().ljust(100), (sys.argv[1], int(sys.argv[2])))
    if n % 10 == 9:
        time.sleep(0.005)
"""


def udp_burst(src: Host, dst: Host, tmp_path: Path, count: int = 400) -> dict[str, int]:
    """Send ``count`` numbered datagrams from src to dst; what dst received."""
    out = tmp_path / f"udp-{time.monotonic_ns()}.json"
    counter = dst.spawn([sys.executable, "-c", UDP_COUNTER, dst.address, "7412", str(out)],
                        tmp_path / "udp-counter.log")  # fmt: skip
    deadline = time.monotonic() + 10
    while not out.with_name(out.name + ".ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    src.run([sys.executable, "-c", UDP_SENDER, dst.address, "7412", str(count)], check=True)
    counter.wait(timeout=30)
    return dict(json.loads(out.read_text()))


@pytest.mark.skipif(not netlab.netem_available(), reason="no sch_netem: the emulation is tested")
def test_faults_without_sch_netem_are_unused_where_netem_runs() -> None:
    assert netlab.fault_engine() == "tc netem"


@pytest.mark.skipif(netlab.netem_available(), reason="tc netem runs here: the netem test covers it")
def test_emulated_faults_drop_duplicate_and_reorder_and_heal_clears_them(
    lab: Lab, tmp_path: Path
) -> None:
    """Without sch_netem (this kernel): nftables loses and duplicates, an HTB
    class holds packets back so they arrive after later ones."""
    a, b = lab.add_host("a"), lab.add_host("b")
    serve(a, tmp_path)
    assert wait_reaches(b, a)
    assert netlab.fault_engine() == "nftables + htb"
    clean = udp_burst(a, b, tmp_path)
    assert clean == {"unique": 400, "dups": 0, "late": 0}, clean

    a.netem(duplicate_pct=25)
    twice = udp_burst(a, b, tmp_path)
    # A copy goes out through eth0's egress again, and may be copied in turn:
    # about 400 * 0.25 / 0.75 = 133 expected.
    assert twice["unique"] == 400 and 60 <= twice["dups"] <= 220, twice

    a.netem(loss_pct=30)  # replaces the duplication
    lossy = udp_burst(a, b, tmp_path)
    assert 200 <= lossy["unique"] <= 340 and lossy["dups"] == 0, lossy

    a.netem(delay_ms=20, reorder_pct=50)
    reordered = udp_burst(a, b, tmp_path)
    assert reordered["unique"] == 400 and reordered["late"] >= 20, reordered
    assert a.netem_options == "delay 20ms reorder 50%"

    a.heal()
    a.heal()  # idempotent
    assert a.netem_options == "" and "htb" not in qdisc(a)
    assert "faults" not in a.run(["nft", "list", "tables"], check=True).stdout
    assert udp_burst(a, b, tmp_path) == clean
    assert rtt(b, a) < 0.05


@pytest.mark.skipif(not netlab.netem_available(), reason="no sch_netem in this kernel")
@pytest.mark.usefixtures("netem_ready")
def test_netem_delays_drops_and_heal_clears_it(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.add_host("a"), lab.add_host("b")
    serve(a, tmp_path)
    assert wait_reaches(b, a)
    assert rtt(b, a) < 0.05

    a.netem(delay_ms=150, jitter_ms=10)  # a's SYN-ACKs are held back
    assert "netem" in qdisc(a) and a.netem_options == "delay 150ms 10ms"
    assert rtt(b, a) >= 0.13
    assert rtt(a, a) < 0.05  # loopback is not eth0

    a.netem(loss_pct=100)  # replaces the delay
    assert "delay" not in qdisc(a) and "loss" in qdisc(a)
    assert not reaches(b, a)

    a.netem(delay_ms=20, jitter_ms=5, loss_pct=1, duplicate_pct=5, reorder_pct=25)
    shown = qdisc(a)  # the numbers' format varies with iproute2's version
    assert all(f in shown for f in ("delay", "loss", "duplicate", "reorder"))
    assert wait_reaches(b, a)
    with pytest.raises(ValueError):
        a.netem(reorder_pct=10)  # nothing to reorder around without a delay

    a.heal()
    a.heal()  # idempotent
    assert "netem" not in qdisc(a) and a.netem_options == ""
    assert rtt(b, a) < 0.05
