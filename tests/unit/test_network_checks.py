"""The node's networking prerequisites: facts to one-line problems with hints."""

from __future__ import annotations

import pytest

from warren.agent.network.checks import (
    FakeProber,
    NodeFacts,
    Problem,
    check_node,
    format_problems,
    problems,
)


def test_a_ready_node_has_no_problems() -> None:
    assert problems(NodeFacts()) == []
    assert format_problems([]) == ""


def test_wireguard_go_stands_in_for_the_missing_module() -> None:
    facts = NodeFacts(
        wireguard_module_error="Operation not supported", wireguard_go_path="/usr/bin/wireguard-go"
    )
    assert facts.wireguard == "wireguard-go"
    assert problems(facts) == []
    assert NodeFacts().wireguard == "kernel"


@pytest.mark.parametrize(
    ("facts", "line"),
    [
        (
            NodeFacts(wireguard_module_error="Operation not supported"),
            "no WireGuard: no kernel module (Operation not supported) and no wireguard-go "
            "on PATH; install wireguard-go: apt install wireguard-go",
        ),
        (
            NodeFacts(ip_forwarding=False),
            "IPv4 forwarding is off (tasks cannot reach other nodes or services); "
            "enable it: sysctl -w net.ipv4.ip_forward=1",
        ),
        (
            NodeFacts(libnftables_error="libnftables.so.1: cannot open shared object file"),
            "libnftables does not work (libnftables.so.1: cannot open shared object file); "
            "install it: apt install libnftables1",
        ),
        (
            NodeFacts(nft_error="not on PATH"),
            "nft does not work (not on PATH); install it: apt install nftables",
        ),
        (
            NodeFacts(bridge_error="Operation not supported"),
            "no bridge support (Operation not supported); load the module: modprobe bridge",
        ),
        (
            NodeFacts(veth_error="Operation not supported"),
            "no veth support (Operation not supported); load the module: modprobe veth",
        ),
    ],
)
def test_each_missing_part_is_one_line_with_a_hint(facts: NodeFacts, line: str) -> None:
    found = problems(facts)
    assert [problem.line() for problem in found] == [line]
    assert format_problems(found) == line


def test_every_problem_is_listed_one_per_line() -> None:
    facts = NodeFacts(
        nft_error="not on PATH",
        wireguard_module_error="Operation not supported",
        ip_forwarding=False,
    )
    text = format_problems(problems(facts))
    assert len(text.splitlines()) == 3
    assert text.splitlines()[0].startswith("nft does not work")


async def test_check_node_asks_the_prober() -> None:
    found = await check_node(FakeProber(NodeFacts(ip_forwarding=False)))
    assert found == [
        Problem(
            "IPv4 forwarding is off (tasks cannot reach other nodes or services)",
            "enable it: sysctl -w net.ipv4.ip_forward=1",
        )
    ]
