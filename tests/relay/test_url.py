"""Relay URLs: parsing, canonical text, clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_p2p.errors import InvalidConfiguration, P2PError
from asgi_p2p.identity import NodeId, SecretKey
from asgi_p2p.relay.url import InvalidRelayUrl, RelayUrl

NODE = SecretKey.from_seed("relay-url").node_id


@pytest.mark.parametrize(
    ("host", "expected_host", "text_host"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1", "[::1]"),
        ("[2001:DB8:0:0::7]", "2001:db8::7", "[2001:db8::7]"),
        ("Relay.Example.ORG", "relay.example.org", "relay.example.org"),
    ],
)
def test_parse_and_canonical_text(host: str, expected_host: str, text_host: str) -> None:
    url = RelayUrl.parse(f"p2p-relay://{NODE}@{host}:7842")
    assert url.node_id == NODE and url.host == expected_host and url.port == 7842
    assert str(url) == f"p2p-relay://{NODE}@{text_host}:7842"
    assert RelayUrl.parse(str(url)) == url
    assert url.is_ip == (expected_host != "relay.example.org")


def test_hex_node_id_trailing_slash_and_case_are_accepted() -> None:
    url = RelayUrl.parse(f"  P2P-RELAY://{NODE.to_bytes().hex()}@10.1.2.3:1/ ")
    assert url == RelayUrl(NODE, "10.1.2.3", 1)
    assert url.node_addr().node_id == NODE and url.node_addr().direct_addresses == (("10.1.2.3", 1),)


def test_constructor_accepts_a_bare_ipv6_host() -> None:
    assert str(RelayUrl(NODE, "fd00::1", 5)) == f"p2p-relay://{NODE}@[fd00::1]:5"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("relay.example.org:7842", "missing scheme"),
        (f"https://{NODE}@1.2.3.4:5", "unsupported scheme 'https'"),
        ("p2p-relay://1.2.3.4:5", "missing NODE_ID@"),
        ("p2p-relay://abc@1.2.3.4:5", "bad node id"),
        (f"p2p-relay://{NODE}@1.2.3.4", "missing :PORT"),
        (f"p2p-relay://{NODE}@1.2.3.4:", "is not a number"),
        (f"p2p-relay://{NODE}@1.2.3.4:0", "not in 1..65535"),
        (f"p2p-relay://{NODE}@1.2.3.4:70000", "not in 1..65535"),
        (f"p2p-relay://{NODE}@::1:5", "must be in brackets"),
        (f"p2p-relay://{NODE}@[::1:5", "unterminated"),
        (f"p2p-relay://{NODE}@[1.2.3.4]:5", "not an IPv6 address"),
        (f"p2p-relay://{NODE}@1.2.3.256:5", "not a valid IPv4 address"),
        (f"p2p-relay://{NODE}@bad_host!:5", "neither an IP address nor a valid DNS name"),
        (f"p2p-relay://{NODE}@:5", "missing host"),
        (f"p2p-relay://{NODE}@1.2.3.4:5/path", "no path or fragment"),
        (f"p2p-relay://{NODE}@1.2.3.4:5?x=1", "the only query a relay URL has is ?tcp=PORT"),
        (f"p2p-relay://{NODE}@1.2.3.4:5?tcp=0", "not a number in 1..65535"),
        (f"p2p-relay://{NODE}@1.2.3.4:5?tcp=x", "not a number in 1..65535"),
        (f"p2p-relay://{NODE}@1.2.3.4:5?tcp", "the only query a relay URL has is ?tcp=PORT"),
        (f"p2p-relay://{NODE}@a@1.2.3.4:5", "more than one '@'"),
    ],
)
def test_bad_urls_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(InvalidRelayUrl) as info:
        RelayUrl.parse(text)
    assert reason in str(info.value)
    assert "expected p2p-relay://NODE_ID@HOST:PORT" in str(info.value)
    assert isinstance(info.value, InvalidConfiguration) and isinstance(info.value, P2PError)


def test_node_addr_needs_an_ip() -> None:
    with pytest.raises(InvalidConfiguration, match="resolve it"):
        RelayUrl(NODE, "relay.example.org", 5).node_addr()


@given(
    st.binary(min_size=32, max_size=32).map(NodeId),
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    st.integers(1, 65535),
)
def test_round_trip(node: NodeId, ip: str, port: int) -> None:
    url = RelayUrl(node, ip, port)
    assert RelayUrl.parse(str(url)) == url
    assert str(RelayUrl.parse(str(url))) == str(url)


def test_tcp_port_round_trips() -> None:
    """A relay that also serves over TCP carries its TCP port as ?tcp=PORT; str() and parse() agree."""
    url = RelayUrl.parse(f"p2p-relay://{NODE}@relay.example.org:7842?tcp=443")
    assert url.tcp_port == 443 and url.port == 7842 and url.host == "relay.example.org"
    assert str(url) == f"p2p-relay://{NODE}@relay.example.org:7842?tcp=443"
    assert RelayUrl.parse(str(url)) == url
    assert RelayUrl.parse(f"p2p-relay://{NODE}@1.2.3.4:5").tcp_port is None
