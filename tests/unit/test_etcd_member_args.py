"""The etcd member's command line and configuration checks (no process started)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from warren.core.errors import InvalidArgument
from warren.manager.etcd.member import (
    MemberConfig,
    etcd_env,
    log_tail,
    member_args,
    split_host_port,
)

A, B, C = "10.0.0.1:2380", "10.0.0.2:2380", "10.0.0.3:2380"


def _config(**changes: Any) -> MemberConfig:
    values: dict[str, Any] = {
        "name": B,
        "data_dir": Path("/var/lib/warren/etcd"),
        "peer_address": B,
        "listen_peer": "0.0.0.0:2380",
        "initial_cluster": {C: C, A: A, B: B},
        "initial_state": "existing",
        "cluster_token": "warren-c1-n1",
        "ca_pem": b"ca",
        "cert_pem": b"cert",
        "key_pem": b"key",
    }
    values.update(changes)
    return MemberConfig(**values)


def _flags(args: list[str]) -> dict[str, str]:
    """--flag value and --flag=value pairs as a dict (every flag appears once)."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(args):
        assert args[i].startswith("--"), args[i]
        name, eq, value = args[i].partition("=")
        if not eq:
            i += 1
            value = args[i]
        assert name not in flags, f"{name} given twice"
        flags[name] = value
        i += 1
    return flags


def test_the_member_is_named_and_placed() -> None:
    flags = _flags(member_args(_config(), 40123))
    assert flags["--name"] == B
    assert flags["--data-dir"] == "/var/lib/warren/etcd/data"
    assert flags["--listen-peer-urls"] == "https://0.0.0.0:2380"
    assert flags["--initial-advertise-peer-urls"] == "https://10.0.0.2:2380"


def test_clients_are_served_on_loopback_only() -> None:
    flags = _flags(member_args(_config(), 40123))
    assert flags["--listen-client-urls"] == "https://127.0.0.1:40123"
    assert flags["--advertise-client-urls"] == "https://127.0.0.1:40123"


def test_the_initial_cluster_names_every_member_in_order() -> None:
    flags = _flags(member_args(_config(), 40123))
    assert flags["--initial-cluster"] == (
        "10.0.0.1:2380=https://10.0.0.1:2380,"
        "10.0.0.2:2380=https://10.0.0.2:2380,"
        "10.0.0.3:2380=https://10.0.0.3:2380"
    )
    assert flags["--initial-cluster-state"] == "existing"
    assert flags["--initial-cluster-token"] == "warren-c1-n1"


def test_timing_and_pre_vote() -> None:
    flags = _flags(member_args(_config(heartbeat_ms=100, election_ms=1000), 40123))
    assert flags["--heartbeat-interval"] == "100"
    assert flags["--election-timeout"] == "1000"
    assert flags["--pre-vote"] == "true"
    defaults = _flags(member_args(_config(), 40123))
    assert (defaults["--heartbeat-interval"], defaults["--election-timeout"]) == ("50", "500")


def test_both_ports_want_a_certificate_from_the_cluster_ca() -> None:
    flags = _flags(member_args(_config(), 40123))
    tls = "/var/lib/warren/etcd/tls"
    assert flags["--client-cert-auth"] == "true"
    assert flags["--peer-client-cert-auth"] == "true"
    assert flags["--trusted-ca-file"] == flags["--peer-trusted-ca-file"] == f"{tls}/ca.pem"
    assert flags["--cert-file"] == flags["--peer-cert-file"] == f"{tls}/cert.pem"
    assert flags["--key-file"] == flags["--peer-key-file"] == f"{tls}/key.pem"
    assert flags["--peer-cert-allowed-cn"] == "warren-etcd-peer"
    assert flags["--client-cert-allowed-hostname"] == "warren-etcd-peer"


def test_limits_logging_and_no_v2() -> None:
    flags = _flags(member_args(_config(), 40123))
    assert flags["--max-request-bytes"] == "33554432"
    assert flags["--logger"] == "zap"
    assert flags["--log-outputs"] == "/var/lib/warren/etcd/etcd.log"
    assert flags["--enable-v2"] == "false"
    # The consensus compacts behind its state images: etcd must not on its own.
    assert not [f for f in flags if "compaction" in f]


def test_ipv6_addresses_are_bracketed_in_urls() -> None:
    me = "[fd00::2]:2380"
    flags = _flags(
        member_args(
            _config(name=me, peer_address=me, listen_peer="[::]:2380", initial_cluster={me: me}),
            40123,
        )
    )
    assert flags["--listen-peer-urls"] == "https://[::]:2380"
    assert flags["--initial-advertise-peer-urls"] == "https://[fd00::2]:2380"
    assert flags["--initial-cluster"] == "[fd00::2]:2380=https://[fd00::2]:2380"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"initial_state": "old"}, "initial cluster state"),
        ({"initial_cluster": {A: A, C: C}}, "must name this member"),
        ({"initial_cluster": {A: A, B: C}}, "must name this member"),
        ({"initial_cluster": {"a,b": A, B: B}}, "invalid etcd member name"),
        ({"initial_cluster": {"a=b": A, B: B}}, "invalid etcd member name"),
        ({"initial_cluster": {A: "10.0.0.1", B: B}}, "expected host:port"),
        ({"listen_peer": "manager-1:2380"}, "IP addresses only"),
        ({"listen_peer": "0.0.0.0:99999"}, "invalid port"),
        ({"cluster_token": ""}, "token"),
        ({"heartbeat_ms": 100, "election_ms": 400}, "five heartbeats"),
    ],
)
def test_a_config_etcd_would_refuse_is_refused_here(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _config(**changes)


def test_the_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _config().name = A  # type: ignore[misc]


@pytest.mark.parametrize(
    ("address", "expected"),
    [("10.0.0.1:2380", ("10.0.0.1", 2380)), ("[::1]:2380", ("::1", 2380)), ("h:1", ("h", 1))],
)
def test_split_host_port(address: str, expected: tuple[str, int]) -> None:
    assert split_host_port(address) == expected


@pytest.mark.parametrize("address", ["10.0.0.1", "::1:2380", ":2380", "h:x", "h:0", "[]:1"])
def test_split_host_port_refuses(address: str) -> None:
    with pytest.raises(InvalidArgument):
        split_host_port(address)


def test_the_environment_cannot_set_etcd_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCD_DATA_DIR", "/elsewhere")
    monkeypatch.setenv("ETCDCTL_API", "2")
    monkeypatch.setenv("GOMAXPROCS", "2")
    env = etcd_env()
    assert "ETCD_DATA_DIR" not in env and "ETCDCTL_API" not in env
    assert env["GOMAXPROCS"] == "2"


def test_the_log_tail_shortens_zap_lines(tmp_path: Path) -> None:
    log = tmp_path / "etcd.log"
    lines = [
        json.dumps({"level": "info", "ts": "t", "msg": f"line {i}", "caller": "x.go"})
        for i in range(10)
    ]
    lines.append(json.dumps({"level": "warn", "msg": "slow", "error": "took long"}))
    lines.append("")
    lines.append("something else")
    log.write_text("\n".join(lines) + "\n")
    assert log_tail(log, lines=3) == "info line 9 | warn slow error=took long | something else"
    assert log_tail(tmp_path / "missing.log") == "(no etcd.log)"


def test_the_log_tail_puts_what_failed_first(tmp_path: Path) -> None:
    log = tmp_path / "etcd.log"
    earlier_run = json.dumps({"level": "fatal", "msg": "an old failure"}) + "\n"
    this_run = [
        json.dumps({"level": "info", "msg": "starting"}),
        json.dumps({"level": "fatal", "msg": "listen failed", "error": "address in use"}),
        "flag provided but not defined: -bogus",
        *[
            f"  --option-{i}  Only supports debug, info, warn, error, panic, or fatal."
            for i in range(20)
        ],
    ]
    log.write_text(earlier_run + "\n".join(this_run) + "\n")
    tail = log_tail(log, since=len(earlier_run), lines=2)
    assert tail.split(" | ") == [
        "fatal listen failed error=address in use",
        "flag provided but not defined: -bogus",
        "--option-18  Only supports debug, info, warn, error, panic, or fatal.",
        "--option-19  Only supports debug, info, warn, error, panic, or fatal.",
    ]
