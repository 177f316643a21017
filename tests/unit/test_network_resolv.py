"""A task's /etc/hosts and /etc/resolv.conf: the content, and writing it."""

from __future__ import annotations

import stat
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from warren.agent.network.bridge import NetworkAddress, NodeNetwork, TaskAttachment
from warren.agent.network.resolv import (
    HOSTS_FILE,
    RESOLV_FILE,
    hosts_content,
    name_files_for,
    resolv_conf_content,
    write_name_files,
)
from warren.core.errors import InvalidArgument


def _task() -> TaskAttachment:
    net_a = NodeNetwork("a", IPv4Network("10.32.5.0/24"))
    net_b = NodeNetwork("b", IPv4Network("10.40.1.0/24"))
    return TaskAttachment(
        "t1",
        Path("/run/netns/warren-t1"),
        (
            NetworkAddress(net_a, IPv4Interface("10.32.5.7/24")),
            NetworkAddress(net_b, IPv4Interface("10.40.1.9/24")),
        ),
    )


def test_hosts_names_loopback_and_the_task() -> None:
    assert hosts_content("web-1", IPv4Address("10.32.5.7")) == (
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.32.5.7\tweb-1\n"
    )


def test_resolv_conf_asks_only_warrens_dns_without_search() -> None:
    text = resolv_conf_content(IPv4Address("10.32.5.1"))
    assert text == "nameserver 10.32.5.1\noptions ndots:0\n"
    assert "search" not in text


def test_the_first_network_gives_the_address_and_the_name_server() -> None:
    files = name_files_for(_task(), "web-1")
    assert files[HOSTS_FILE].endswith("10.32.5.7\tweb-1\n")
    assert files[RESOLV_FILE].startswith("nameserver 10.32.5.1\n")


@pytest.mark.parametrize("bad", ["", "-web", "web_1", "a..b", "x" * 64, "a b", "web\nevil"])
def test_bad_hostnames_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        hosts_content(bad, IPv4Address("10.32.5.7"))
    assert "\n" not in str(raised.value).replace(repr(bad), "")


def test_files_are_written_whole_and_readable(tmp_path: Path) -> None:
    (tmp_path / HOSTS_FILE).write_text("old\n")
    written = write_name_files(tmp_path, name_files_for(_task(), "web-1"))
    assert written == {HOSTS_FILE: tmp_path / HOSTS_FILE, RESOLV_FILE: tmp_path / RESOLV_FILE}
    assert (tmp_path / RESOLV_FILE).read_text() == "nameserver 10.32.5.1\noptions ndots:0\n"
    assert (tmp_path / HOSTS_FILE).read_text().endswith("10.32.5.7\tweb-1\n")
    for path in written.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [HOSTS_FILE, RESOLV_FILE]


def test_bad_targets_change_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a name file"):
        write_name_files(tmp_path, {"passwd": "root::0:0::/:/bin/sh\n"})
    with pytest.raises(InvalidArgument, match="not a directory"):
        write_name_files(tmp_path / "missing", {HOSTS_FILE: ""})
    assert list(tmp_path.iterdir()) == []
