"""Network models: subnets, node blocks, ports, endpoints, attachments and their errors."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from warren.core.codec import from_dict, to_dict
from warren.core.errors import InvalidArgument
from warren.core.models import NAME_RE
from warren.core.networks import (
    NETWORK_NAME_RE,
    Endpoint,
    EndpointMode,
    EndpointSpec,
    Network,
    NetworkAttachment,
    NetworkSpec,
    NodeBlock,
    PortConfig,
    PortProtocol,
    PublishMode,
    VirtualIP,
    block_prefix_for,
    parse_subnet,
)


def _network(subnet: str = "10.32.0.0/16", **kw: Any) -> Network:
    fields: dict[str, Any] = {"block_prefix": 24, **kw}
    return Network(id="n1", spec=NetworkSpec(name="front"), subnet=subnet, **fields)


def test_network_names_follow_the_service_name_rule() -> None:
    assert NETWORK_NAME_RE.pattern == NAME_RE.pattern
    assert NetworkSpec(name="front-end_1.a").name == "front-end_1.a"


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 64, "a\n"])
def test_a_bad_network_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^invalid network name .*: use 1-63 letters"):
        NetworkSpec(name=name)


@pytest.mark.parametrize(
    ("subnet", "message"),
    [
        ("10.0.0.0", r"^invalid subnet '10\.0\.0\.0': expected a CIDR such as 10\.32\.0\.0/16$"),
        ("bogus/16", r"^invalid subnet 'bogus/16': expected a CIDR"),
        ("10.0.0.0/33", r"^invalid subnet '10\.0\.0\.0/33': expected a CIDR"),
        ("fd00::/64", r"^subnet 'fd00::/64' is IPv6: only IPv4 subnets are supported$"),
        (
            "10.1.2.3/16",
            r"^subnet '10\.1\.2\.3/16' has host bits set: did you mean 10\.1\.0\.0/16\?$",
        ),
        (
            "10.1.0.0/255.255.0.0",
            r"^subnet '10\.1\.0\.0/255\.255\.0\.0' is not a plain CIDR: "
            r"did you mean 10\.1\.0\.0/16\?$",
        ),
        ("10.0.0.0/25", r"^subnet 10\.0\.0\.0/25 is a /25: use a /8 to a /24$"),
        ("10.0.0.0/7", r"^subnet 10\.0\.0\.0/7 is a /7: use a /8 to a /24$"),
        ("127.0.0.0/8", r"^subnet 127\.0\.0\.0/8 is in the loopback range: use a private range"),
        ("169.254.0.0/16", r"is in the link-local range"),
        ("224.0.0.0/8", r"is in the multicast range"),
        ("0.0.0.0/8", r"is in the unspecified range"),
        ("240.0.0.0/8", r"is in the reserved range"),
    ],
)
def test_a_bad_subnet_is_refused_in_one_line(subnet: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        NetworkSpec(name="front", subnet=subnet)


def test_a_good_subnet_is_accepted() -> None:
    assert NetworkSpec(name="front", subnet="192.168.8.0/22").subnet == "192.168.8.0/22"
    assert parse_subnet("10.32.0.0/16") == ipaddress.IPv4Network("10.32.0.0/16")


def test_a_bad_label_key_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"^invalid network label key '-x'$"):
        NetworkSpec(name="front", labels={"-x": "1"})


@pytest.mark.parametrize(
    ("subnet", "prefix"),
    [
        ("10.0.0.0/8", 24),
        ("10.32.0.0/16", 24),
        ("10.32.0.0/20", 24),
        ("10.32.0.0/21", 25),
        ("10.32.0.0/24", 28),
    ],
)
def test_node_blocks_are_a_24_or_a_16th_of_a_small_subnet(subnet: str, prefix: int) -> None:
    assert block_prefix_for(ipaddress.IPv4Network(subnet)) == prefix


def test_the_vip_range_is_the_first_quarter_and_a_blocks_gateway_its_first_address() -> None:
    net = _network(blocks=(NodeBlock("node-a", "10.32.64.0/24"),))
    assert str(net.vip_range) == "10.32.0.0/18"
    assert net.blocks[0].gateway == "10.32.64.1"
    assert net.blocks_of("node-a") == net.blocks
    assert net.blocks_of("node-b") == ()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"blocks": (NodeBlock("a", "10.33.64.0/24"),)},
            r"^network front: node block 10\.33\.64\.0/24 is not a /24 of 10\.32\.0\.0/16$",
        ),
        ({"blocks": (NodeBlock("a", "10.32.64.0/25"),)}, r"is not a /24 of"),
        (
            {"blocks": (NodeBlock("a", "10.32.1.0/24"),)},
            r"^network front: node block 10\.32\.1\.0/24 is in the VIP range 10\.32\.0\.0/18$",
        ),
        (
            {"blocks": (NodeBlock("a", "10.32.64.0/24"), NodeBlock("b", "10.32.64.0/24"))},
            r"^network front: node block 10\.32\.64\.0/24 is held twice$",
        ),
        (
            {"block_prefix": 18},
            r"^network front: node blocks of 10\.32\.0\.0/16 must be a /20 to a /28, not a /18$",
        ),
        ({"block_prefix": 29}, r"must be a /20 to a /28, not a /29$"),
    ],
)
def test_a_network_with_inconsistent_blocks_is_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _network(**kw)


def test_a_network_holds_the_subnet_its_spec_asked_for() -> None:
    with pytest.raises(InvalidArgument, match=r"^network front asked for 10\.1\.0\.0/16 but holds"):
        Network(
            id="n1",
            spec=NetworkSpec(name="front", subnet="10.1.0.0/16"),
            subnet="10.32.0.0/16",
            block_prefix=24,
        )
    with pytest.raises(InvalidArgument, match=r"^network id must not be empty$"):
        Network(id="", spec=NetworkSpec(name="front"), subnet="10.32.0.0/16", block_prefix=24)


def test_a_node_block_needs_a_node_and_a_cidr() -> None:
    with pytest.raises(InvalidArgument, match=r"^node block node_id must not be empty$"):
        NodeBlock("", "10.32.64.0/24")
    with pytest.raises(InvalidArgument, match=r"^invalid node block '10\.32\.64\.0'"):
        NodeBlock("a", "10.32.64.0")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"target": 80, "published": 70000},
            r"^published port must be between 1 and 65535 \(or 0 to let Warren pick one\), "
            r"not 70000$",
        ),
        ({"target": 80, "published": -1}, r"^published port must be between 1 and 65535 .*not -1$"),
        ({"target": 0}, r"^target port must be between 1 and 65535, not 0$"),
        ({"target": 65536}, r"^target port must be between 1 and 65535, not 65536$"),
        ({"target": True}, r"^target port must be between 1 and 65535, not 'True'$"),
    ],
)
def test_a_bad_port_is_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        PortConfig(**kw)


def test_a_port_defaults_to_tcp_ingress_picked_by_warren() -> None:
    port = PortConfig(target=80)
    assert (port.published, port.protocol, port.mode) == (0, PortProtocol.TCP, PublishMode.INGRESS)
    assert str(PortConfig(target=53, published=53, protocol=PortProtocol.UDP)) == "53/udp"


def test_an_endpoint_spec_may_not_publish_a_port_twice() -> None:
    with pytest.raises(InvalidArgument, match=r"^published port 8080/tcp is listed twice$"):
        EndpointSpec(
            ports=(
                PortConfig(target=80, published=8080),
                PortConfig(target=81, published=8080, mode=PublishMode.HOST),
            )
        )
    # The same number on both protocols, and several ports for Warren to pick, are fine.
    spec = EndpointSpec(
        ports=(
            PortConfig(target=80, published=8080),
            PortConfig(target=80, published=8080, protocol=PortProtocol.UDP),
            PortConfig(target=80),
            PortConfig(target=80),
        )
    )
    assert spec.mode is EndpointMode.VIP


@pytest.mark.parametrize(
    "address", ["10.32.64.2", "10.32.64.300/24", "fd00::2/64", "x/24", "10.32.64.2/255.255.255.0"]
)
def test_an_attachment_or_vip_needs_an_ipv4_address_with_prefix(address: str) -> None:
    with pytest.raises(
        InvalidArgument, match=r"^invalid task address .*: expected a\.b\.c\.d/prefix$"
    ):
        NetworkAttachment("n1", address)
    with pytest.raises(
        InvalidArgument, match=r"^invalid virtual IP .*: expected a\.b\.c\.d/prefix$"
    ):
        VirtualIP("n1", address)


def test_an_attachment_and_a_vip_name_their_network() -> None:
    with pytest.raises(InvalidArgument, match=r"^attachment network_id must not be empty$"):
        NetworkAttachment("", "10.32.64.2/24")
    with pytest.raises(InvalidArgument, match=r"^virtual IP network_id must not be empty$"):
        VirtualIP("", "10.32.0.9/16")
    assert NetworkAttachment("n1", "10.32.64.2/24").ip == "10.32.64.2"
    assert VirtualIP("n1", "10.32.0.9/16").ip == "10.32.0.9"


def test_an_allocated_endpoint_has_numbered_ports_and_one_vip_per_network() -> None:
    with pytest.raises(InvalidArgument, match=r"^allocated port for target 80 has no number$"):
        Endpoint(ports=(PortConfig(target=80),))
    with pytest.raises(InvalidArgument, match=r"^a service holds one virtual IP per network$"):
        Endpoint(vips=(VirtualIP("n1", "10.32.0.9/16"), VirtualIP("n1", "10.32.0.10/16")))


def test_the_models_round_trip_through_the_codec() -> None:
    net = _network(blocks=(NodeBlock("node-a", "10.32.64.0/24"),))
    spec = EndpointSpec(
        mode=EndpointMode.DNSRR,
        ports=(
            PortConfig(target=53, published=5353, protocol=PortProtocol.UDP, mode=PublishMode.HOST),
        ),
    )
    held = Endpoint(
        vips=(VirtualIP("n1", "10.32.0.9/16"),), ports=(PortConfig(target=80, published=30000),)
    )
    for obj in (net, spec, held, NetworkAttachment("n1", "10.32.64.2/24")):
        assert from_dict(type(obj), to_dict(obj)) == obj
    assert to_dict(spec)["ports"][0] == {
        "target": 53,
        "published": 5353,
        "protocol": "udp",
        "mode": "host",
    }


def test_the_codec_refuses_a_bad_protocol_and_a_bad_port_in_one_line() -> None:
    with pytest.raises(
        InvalidArgument, match=r"^portconfig\.protocol: 'sctp' is not one of: tcp, udp$"
    ):
        from_dict(PortConfig, {"target": 80, "protocol": "sctp"})
    with pytest.raises(InvalidArgument, match=r"^published port must be between 1 and 65535"):
        from_dict(EndpointSpec, {"ports": [{"target": 80, "published": 99999}]})
