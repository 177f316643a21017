"""The WireGuard mesh without I/O: keys, inputs, MTU, the planner (against the fake
device, which has WireGuard's set semantics), UAPI encoding/parsing and its client
over a unix socket, the kernel backend's netlink messages."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.generic.wireguard import wgmsg

from warren.agent.network import wg_devices
from warren.agent.network.wg_devices import missing_requirements
from warren.agent.network.wg_fake import FakeDevice
from warren.agent.network.wg_kernel import kernel_peer_request, parse_kernel_info
from warren.agent.network.wg_uapi import (
    UapiClient,
    encode_set,
    error_for_errno,
    key_to_hex,
    parse_get,
)
from warren.agent.network.wireguard import (
    KEY_FILE,
    AddPeer,
    InterfaceConfig,
    Mesh,
    MeshPlan,
    Peer,
    PeerState,
    RemovePeer,
    UpdatePeer,
    generate_private_key,
    load_or_create_key,
    mesh_mtu,
    plan_mesh,
    public_key_of,
)
from warren.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)

NOW = 1_800_000_000.0
PRIVATE = generate_private_key()
KEYS = [public_key_of(generate_private_key()) for _ in range(5)]


def config(**changes: object) -> InterfaceConfig:
    base: dict[str, object] = {
        "name": "wg-warren",
        "private_key": PRIVATE,
        "listen_port": 51820,
        "address": "10.77.1.1",
        "mtu": 1420,
    }
    return InterfaceConfig(**{**base, **changes})  # type: ignore[arg-type]


def subnets_of(index: int) -> list[str]:
    return [f"10.{index}.{j}.0/24" for j in range(3)]


# -- keys ------------------------------------------------------------------------------


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    directory = tmp_path / "wg"
    first = load_or_create_key(directory)
    path = directory / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert load_or_create_key(directory) == first
    assert first.private_key not in repr(first)
    assert len(base64.b64decode(first.public_key)) == 32


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools not installed")
def test_public_key_matches_wg_pubkey(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    done = subprocess.run(
        ["wg", "pubkey"], input=key.private_key, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == key.public_key


def test_damaged_key_file_is_refused_and_kept(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not a key\n")
    with pytest.raises(FailedPrecondition, match="does not hold a WireGuard private key"):
        load_or_create_key(tmp_path)
    assert (tmp_path / KEY_FILE).read_text() == "not a key\n"


def test_loose_key_file_mode_is_tightened(tmp_path: Path) -> None:
    load_or_create_key(tmp_path)
    os.chmod(tmp_path / KEY_FILE, 0o644)
    load_or_create_key(tmp_path)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


# -- inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "a-name-too-long-x"}, "interface name"),
        ({"private_key": "abc"}, "not a WireGuard key"),
        ({"listen_port": 0}, "not a port"),
        ({"address": "10.0.0.0/24"}, "not an IP address"),
        ({"mtu": 1000}, "MTU"),
    ],
)
def test_bad_interface_config_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        config(**changes)


def test_peer_inputs_are_normalized_and_checked() -> None:
    peer = Peer(KEYS[0], "[2001:db8:0::1]:51820", ("10.2.0.0/24", "10.1.0.0/24", "10.1.0.0/24"))
    assert peer.endpoint == "[2001:db8::1]:51820"
    assert peer.allowed_ips == ("10.1.0.0/24", "10.2.0.0/24")
    assert peer.persistent_keepalive == 25
    with pytest.raises(InvalidArgument, match="needs an IP address"):
        Peer(KEYS[0], "node-2:51820")
    with pytest.raises(InvalidArgument, match="not ADDRESS:PORT"):
        Peer(KEYS[0], "10.0.0.2:70000")
    with pytest.raises(InvalidArgument, match="not a subnet"):
        Peer(KEYS[0], "10.0.0.2:51820", ("10.1.0.1/24",))
    with pytest.raises(InvalidArgument, match="not a WireGuard key"):
        Peer("bm90IGEga2V5", "10.0.0.2:51820")


def test_inconsistent_peers_are_refused_and_nothing_changes() -> None:
    device = FakeDevice()
    mesh = Mesh(device, config())
    own = config().public_key
    cases = [
        [Peer(own, "10.0.0.2:51820")],
        [Peer(KEYS[0], "10.0.0.2:51820"), Peer(KEYS[0], "10.0.0.3:51820")],
        [
            Peer(KEYS[0], "10.0.0.2:51820", ("10.1.0.0/16",)),
            Peer(KEYS[1], "10.0.0.3:51820", ("10.1.2.0/24",)),
        ],
    ]
    for peers in cases:
        with pytest.raises(InvalidArgument):
            mesh.sync(peers)
    assert device.calls == []


# -- MTU -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("egress", "mtu"), [(1500, 1420), (1400, 1320), (9000, 1420), (1300, 1280)]
)
def test_mesh_mtu_examples(egress: int, mtu: int) -> None:
    assert mesh_mtu(egress) == mtu


@settings(deadline=None)  # a shared 2-core machine stalls examples; that says nothing here
@given(st.integers(min_value=68, max_value=65535), st.integers(min_value=68, max_value=65535))
def test_mesh_mtu_is_clamped_and_monotone(one: int, two: int) -> None:
    assert 1280 <= mesh_mtu(one) <= 1420
    if 1360 <= one <= 1500:
        assert mesh_mtu(one) == one - 80
    if one <= two:
        assert mesh_mtu(one) <= mesh_mtu(two)


# -- the planner -----------------------------------------------------------------------

endpoints = st.sampled_from(["10.0.0.2:51820", "10.0.0.3:51820", "[fd00::9]:4500"])
keepalives = st.sampled_from([0, 25])


@st.composite
def peer_sets(draw: st.DrawFn) -> list[Peer]:
    chosen = draw(st.sets(st.integers(0, len(KEYS) - 1)))
    return [
        Peer(
            KEYS[i],
            draw(endpoints),
            tuple(draw(st.sets(st.sampled_from(subnets_of(i))))),
            draw(keepalives),
        )
        for i in sorted(chosen)
    ]


def device_with(peers: list[Peer], routes: set[str], listen_port: int, mtu: int) -> FakeDevice:
    device = FakeDevice()
    device.create(config(listen_port=listen_port, mtu=mtu))
    link = device.interfaces["wg-warren"]
    for peer in peers:
        link.peers[peer.public_key] = PeerState(
            peer.public_key, peer.endpoint, peer.allowed_ips, peer.persistent_keepalive
        )
    link.routes = set(routes)
    return device


def route_sets() -> st.SearchStrategy[set[str]]:
    every = [net for i in range(len(KEYS)) for net in subnets_of(i)] + ["192.168.9.0/24"]
    return st.sets(st.sampled_from(every))


@settings(deadline=None)
@given(
    peer_sets(),
    peer_sets(),
    route_sets(),
    st.sampled_from([51820, 51821]),
    st.sampled_from([1420, 1380]),
)
def test_plan_reaches_the_desired_state_with_the_fewest_changes(
    current: list[Peer], desired: list[Peer], routes: set[str], port: int, mtu: int
) -> None:
    device = device_with(current, routes, port, mtu)
    before = device.state("wg-warren")
    plan = plan_mesh(config(), before, desired, NOW)
    device.apply("wg-warren", plan)
    after = device.state("wg-warren")

    wanted = {p.public_key: p for p in desired}
    assert {p.public_key for p in after.peers} == set(wanted)
    for have in after.peers:
        peer = wanted[have.public_key]
        assert (have.endpoint, have.allowed_ips, have.persistent_keepalive) == (
            peer.endpoint,
            peer.allowed_ips,
            peer.persistent_keepalive,
        )
    assert set(after.routes) == {net for p in desired for net in p.allowed_ips}
    assert (after.listen_port, after.mtu) == (51820, 1420)
    # Minimal: an unchanged peer is not touched, and a second plan is empty.
    unchanged = {p.public_key for p in current} & {p.public_key for p in desired if p in current}
    touched = {
        c.peer.public_key if isinstance(c, AddPeer) else c.public_key for c in plan.peer_changes
    }
    assert not unchanged & touched
    assert plan_mesh(config(), after, desired, NOW).empty


def test_update_carries_only_what_changed() -> None:
    old = Peer(KEYS[0], "10.0.0.2:51820", ("10.0.1.0/24",))
    device = device_with([old], {"10.0.1.0/24"}, 51820, 1420)
    new = Peer(KEYS[0], "10.0.0.2:51820", ("10.0.1.0/24", "10.0.2.0/24"))
    plan = plan_mesh(config(), device.state("wg-warren"), [new], NOW)
    assert plan.peer_changes == (UpdatePeer(KEYS[0], allowed_ips=("10.0.1.0/24", "10.0.2.0/24")),)
    assert plan.routes_to_add == ("10.0.2.0/24",)
    assert plan.routes_to_remove == ()


def test_a_live_session_keeps_its_roamed_endpoint_a_dead_one_is_reset() -> None:
    peer = Peer(KEYS[0], "10.0.0.2:51820", ("10.0.1.0/24",))
    device = device_with([peer], {"10.0.1.0/24"}, 51820, 1420)
    device.handshake("wg-warren", KEYS[0], at=NOW - 30, endpoint="203.0.113.7:40001")
    assert plan_mesh(config(), device.state("wg-warren"), [peer], NOW).empty
    later = NOW + 200
    plan = plan_mesh(config(), device.state("wg-warren"), [peer], later)
    assert plan.peer_changes == (UpdatePeer(KEYS[0], endpoint="10.0.0.2:51820"),)


def test_a_new_key_is_planned_and_reported() -> None:
    device = device_with([], set(), 51820, 1420)
    other = generate_private_key()
    plan = plan_mesh(config(private_key=other), device.state("wg-warren"), [], NOW)
    assert plan.private_key == other and plan.touches_wireguard
    device.apply("wg-warren", plan)
    assert device.state("wg-warren").public_key == public_key_of(other)


def test_mesh_sync_creates_once_then_applies_only_changes() -> None:
    device = FakeDevice()
    mesh = Mesh(device, config())
    peers = [Peer(KEYS[0], "10.0.0.2:51820", ("10.0.1.0/24",))]
    first = mesh.sync(peers, now=NOW)
    assert first.peer_changes == (AddPeer(peers[0]),)
    assert mesh.sync(peers, now=NOW).empty
    assert device.calls == [("create", "wg-warren"), ("apply", "wg-warren")]
    assert mesh.sync([], now=NOW).peer_changes == (RemovePeer(KEYS[0]),)
    mesh.close()
    assert not device.exists("wg-warren")


def test_handshake_age() -> None:
    assert PeerState(KEYS[0], None, (), 25).handshake_age(NOW) is None
    assert PeerState(KEYS[0], None, (), 25, last_handshake=NOW - 7).handshake_age(NOW) == 7


# -- UAPI ------------------------------------------------------------------------------


def test_encode_set_writes_hex_keys_and_only_changes() -> None:
    add = Peer(KEYS[0], "10.0.0.2:51820", ("10.0.1.0/24",))
    plan = MeshPlan(
        listen_port=51821,
        peer_changes=(
            RemovePeer(KEYS[1]),
            AddPeer(add),
            UpdatePeer(KEYS[2], endpoint="[fd00::2]:51820", allowed_ips=()),
        ),
    )
    assert (
        encode_set(plan)
        == (
            "set=1\nlisten_port=51821\n"
            f"public_key={key_to_hex(KEYS[1])}\nremove=true\n"
            f"public_key={key_to_hex(KEYS[0])}\nendpoint=10.0.0.2:51820\n"
            "persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.1.0/24\n"
            f"public_key={key_to_hex(KEYS[2])}\nupdate_only=true\nendpoint=[fd00::2]:51820\n"
            "replace_allowed_ips=true\n\n"
        ).encode()
    )
    assert encode_set(MeshPlan(mtu=1400, routes_to_add=("10.0.1.0/24",))) is None


GET_REPLY = (
    f"private_key={base64.b64decode(PRIVATE).hex()}\nlisten_port=51820\n"
    f"public_key={key_to_hex(KEYS[0])}\npreshared_key={'0' * 64}\nprotocol_version=1\n"
    "endpoint=10.0.0.2:51820\nlast_handshake_time_sec=1800000000\n"
    "last_handshake_time_nsec=500000000\ntx_bytes=1200\nrx_bytes=3400\n"
    "persistent_keepalive_interval=25\nallowed_ip=10.0.2.0/24\nallowed_ip=10.0.1.0/24\n"
    f"public_key={key_to_hex(KEYS[1])}\nlast_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n"
)


def test_parse_get() -> None:
    device = parse_get(GET_REPLY)
    assert device.public_key == config().public_key
    assert device.listen_port == 51820
    assert device.peers == (
        PeerState(
            KEYS[0],
            "10.0.0.2:51820",
            ("10.0.1.0/24", "10.0.2.0/24"),
            25,
            1_800_000_000.5,
            3400,
            1200,
        ),
        PeerState(KEYS[1], None, (), 0),
    )


def test_uapi_errnos_become_warren_errors() -> None:
    assert isinstance(error_for_errno(-22, "wg0"), InvalidArgument)
    assert isinstance(error_for_errno(-71, "wg0"), InvalidArgument)
    err = error_for_errno(-98, "wg0")
    assert isinstance(err, AlreadyExists) and "listen port is taken" in err.message
    assert isinstance(error_for_errno(-5, "wg0"), Unavailable)


@pytest.fixture
def uapi_server(tmp_path: Path) -> Iterator[tuple[Path, list[bytes], list[bytes]]]:
    """A unix socket answering each connection with the next canned reply, in pieces."""
    path = tmp_path / "wgt.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    requests: list[bytes] = []
    replies: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n\n"):
                    data += conn.recv(4096)
                requests.append(data)
                reply = replies.pop(0)
                for start in range(0, len(reply), 7):
                    conn.sendall(reply[start : start + 7])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, requests, replies
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(timeout=5)


def test_uapi_client_over_a_socket(uapi_server: tuple[Path, list[bytes], list[bytes]]) -> None:
    path, requests, replies = uapi_server
    client = UapiClient("wgt", path.parent)
    replies += [(GET_REPLY + "errno=0\n\n").encode(), b"errno=-22\n\n"]
    assert client.get().peers[0].rx_bytes == 3400
    with pytest.raises(InvalidArgument, match="EINVAL"):
        client.set(b"set=1\nlisten_port=x\n\n")
    assert requests == [b"get=1\n\n", b"set=1\nlisten_port=x\n\n"]
    assert client.server_pid() == os.getpid()


def test_uapi_client_without_a_server(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="wireguard-go for wgt is not running"):
        UapiClient("wgt", tmp_path).get()


# -- the kernel backend's messages and the node check ----------------------------------


def test_kernel_peer_requests() -> None:
    add = AddPeer(Peer(KEYS[0], "[fd00::2]:51820", ("10.0.1.0/24",)))
    assert kernel_peer_request(add) == {
        "public_key": KEYS[0],
        "endpoint_addr": "fd00::2",
        "endpoint_port": 51820,
        "persistent_keepalive": 25,
        "replace_allowed_ips": True,
        "allowed_ips": ["10.0.1.0/24"],
    }
    assert kernel_peer_request(RemovePeer(KEYS[1])) == {"public_key": KEYS[1], "remove": True}
    assert kernel_peer_request(UpdatePeer(KEYS[2], persistent_keepalive=0)) == {
        "public_key": KEYS[2],
        "update_only": True,
        "persistent_keepalive": 0,
    }


def _kernel_message(attrs: list[list[object]]) -> wgmsg:
    msg = wgmsg()
    msg["cmd"] = 0
    msg["version"] = 1
    msg["attrs"] = attrs
    msg.encode()
    decoded = wgmsg(msg.data)
    decoded.decode()
    return decoded


def _allowed(net: str) -> dict[str, object]:
    addr, mask = net.split("/")
    return {
        "attrs": [
            ["WGALLOWEDIP_A_FAMILY", socket.AF_INET],
            ["WGALLOWEDIP_A_IPADDR", socket.inet_aton(addr)],
            ["WGALLOWEDIP_A_CIDR_MASK", int(mask)],
        ]
    }


def test_parse_kernel_info_joins_a_peer_split_over_messages() -> None:
    own = config().public_key
    first = _kernel_message([
        ["WGDEVICE_A_PUBLIC_KEY", own],
        ["WGDEVICE_A_LISTEN_PORT", 51820],
        ["WGDEVICE_A_PEERS", [{"attrs": [
            ["WGPEER_A_PUBLIC_KEY", KEYS[0]],
            ["WGPEER_A_ENDPOINT", {"addr": "10.0.0.2", "port": 51820}],
            ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1_800_000_000, "tv_nsec": 0}],
            ["WGPEER_A_RX_BYTES", 10],
            ["WGPEER_A_TX_BYTES", 20],
            ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
            ["WGPEER_A_ALLOWEDIPS", [_allowed("10.0.1.0/24")]],
        ]}]],
    ])  # fmt: skip
    second = _kernel_message([
        ["WGDEVICE_A_PEERS", [{"attrs": [
            ["WGPEER_A_PUBLIC_KEY", KEYS[0]],
            ["WGPEER_A_ALLOWEDIPS", [_allowed("10.0.2.0/24")]],
        ]}]],
    ])  # fmt: skip
    public_key, port, peers = parse_kernel_info([first, second])
    assert (public_key, port) == (own, 51820)
    assert peers == (
        PeerState(
            KEYS[0], "10.0.0.2:51820", ("10.0.1.0/24", "10.0.2.0/24"), 25, 1_800_000_000.0, 10, 20
        ),
    )


def test_missing_requirements_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wg_devices, "kernel_wireguard_works", lambda: False)
    monkeypatch.setattr(wg_devices.shutil, "which", lambda _name: None)
    problem = missing_requirements()
    assert problem is not None
    assert "no wireguard module" in problem and "install the wireguard-go package" in problem
    with pytest.raises(FailedPrecondition, match="wireguard-go"):
        wg_devices.select_device()
