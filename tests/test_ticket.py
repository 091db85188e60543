"""The ticket codec: round trips, corruption detection, bad input, targets."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_p2p.errors import InvalidTicket, P2PError
from asgi_p2p.identity import NodeAddr, NodeId, SecretKey, zbase32_encode
from asgi_p2p.ticket import TICKET_PREFIX, Ticket, parse_target

NODE = SecretKey.from_seed("ticket-test").node_id

node_ids = st.binary(min_size=32, max_size=32).map(NodeId)
ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
names = st.from_regex(r"[a-z][a-z0-9-]{0,30}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True)
addresses = st.tuples(st.one_of(ipv4, ipv6, names), ports)
relays = st.one_of(st.none(), st.text(min_size=1, max_size=200).map(lambda s: "https://" + s))
tickets = st.builds(Ticket, node_ids, relays, st.lists(addresses, max_size=8).map(tuple))


@given(tickets)
def test_text_round_trip(ticket: Ticket) -> None:
    text = ticket.encode()
    assert text.startswith(TICKET_PREFIX)
    assert text == str(ticket)
    assert text.isascii() and text == text.lower() and " " not in text
    assert Ticket.parse(text) == ticket
    assert Ticket.parse(text.upper()) == ticket  # case-insensitive, like the node id text form


@given(tickets)
def test_binary_and_node_addr_round_trip(ticket: Ticket) -> None:
    assert Ticket.from_bytes(ticket.to_bytes()) == ticket
    addr = ticket.to_node_addr()
    assert isinstance(addr, NodeAddr)
    assert Ticket.from_node_addr(addr) == ticket


@given(tickets, st.data())
def test_any_single_character_change_is_detected(ticket: Ticket, data: st.DataObject) -> None:
    text = ticket.encode()
    i = data.draw(st.integers(len(TICKET_PREFIX), len(text) - 1))
    c = data.draw(st.sampled_from("ybndrfg8ejkmcpqxot1uwisza345h769").filter(lambda c: c != text[i]))
    damaged = text[:i] + c + text[i + 1 :]
    with pytest.raises(InvalidTicket):
        Ticket.parse(damaged)


@given(tickets, st.data())
def test_truncation_is_detected(ticket: Ticket, data: st.DataObject) -> None:
    text = ticket.encode()
    n = data.draw(st.integers(0, len(text) - 1))
    with pytest.raises(InvalidTicket):
        Ticket.parse(text[:n])


@given(tickets, st.data())
def test_byte_flip_is_detected(ticket: Ticket, data: st.DataObject) -> None:
    raw = bytearray(ticket.to_bytes())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(InvalidTicket):
        Ticket.from_bytes(bytes(raw))


@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_invalid_ticket(text: str) -> None:
    try:
        Ticket.parse(text)
    except InvalidTicket as exc:
        assert str(exc)
    try:
        parse_target(text)
    except InvalidTicket as exc:
        assert isinstance(exc, (P2PError, ValueError))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_with_prefix_raise_only_invalid_ticket(data: bytes) -> None:
    with pytest.raises(InvalidTicket):
        Ticket.parse(TICKET_PREFIX + zbase32_encode(data))


def test_valid_checksum_but_unknown_version() -> None:
    import hashlib

    payload = bytes([2]) + NODE.to_bytes() + b"\x00\x00"
    raw = payload + hashlib.sha256(payload).digest()[:4]
    with pytest.raises(InvalidTicket, match="version 2"):
        Ticket.from_bytes(raw)


def test_trailing_bytes_with_valid_checksum() -> None:
    import hashlib

    payload = bytes([1]) + NODE.to_bytes() + b"\x00\x00" + b"junk"
    raw = payload + hashlib.sha256(payload).digest()[:4]
    with pytest.raises(InvalidTicket, match="trailing"):
        Ticket.from_bytes(raw)


def test_messages_are_clear() -> None:
    with pytest.raises(InvalidTicket, match="not a ticket"):
        Ticket.parse("hello")
    with pytest.raises(InvalidTicket, match="format"):
        Ticket.parse("p2p9abc")
    text = Ticket(NODE, None, [("127.0.0.1", 1)]).encode()
    with pytest.raises(InvalidTicket, match="copy"):
        Ticket.parse(text[:-3])
    with pytest.raises(InvalidTicket, match="damaged"):
        Ticket.parse(text + "0")  # '0' is not z-base-32


def test_whitespace_from_copy_paste_is_ignored() -> None:
    ticket = Ticket(NODE, "https://relay.example", [("192.0.2.1", 4433), ("2001:db8::1", 4433)])
    text = ticket.encode()
    assert Ticket.parse("  " + text[:20] + "\n" + text[20:] + " \n") == ticket


def test_ticket_is_never_a_node_id() -> None:
    text = Ticket(NODE).encode()
    assert "2" not in text[len(TICKET_PREFIX) :]
    assert len(text) != 52


def test_ipv6_is_compact_and_normalised() -> None:
    ticket = Ticket(NODE, None, [("::1", 443), ("2001:0db8:0000::0001", 1)])
    parsed = Ticket.parse(ticket.encode())
    assert parsed.direct_addresses == (("::1", 443), ("2001:db8::1", 1))
    assert ipaddress.ip_address(parsed.direct_addresses[1][0]).version == 6


def test_empty_relay_is_none() -> None:
    assert Ticket(NODE, "").relay_url is None
    assert Ticket.parse(Ticket(NODE, "").encode()).relay_url is None


def test_bad_values_refused_when_encoding() -> None:
    with pytest.raises(InvalidTicket, match="port"):
        Ticket(NODE, None, [("127.0.0.1", 70000)]).encode()
    with pytest.raises(InvalidTicket, match="addresses"):
        Ticket(NODE, None, [("127.0.0.1", p) for p in range(256)]).encode()
    with pytest.raises(InvalidTicket, match="relay"):
        Ticket(NODE, "https://" + "x" * 3000).encode()


# -- parse_target ---------------------------------------------------------------


def test_target_ticket_with_path() -> None:
    ticket = Ticket(NODE, None, [("127.0.0.1", 9)])
    target = parse_target(f"{ticket}/tracks/1?q=a%20b")
    assert target.addr == ticket.to_node_addr()
    assert target.path == "/tracks/1?q=a%20b"


@pytest.mark.parametrize("suffix,path", [("", "/"), ("/", "/"), ("/x/y", "/x/y"), ("?a=1", "/?a=1")])
def test_target_paths(suffix: str, path: str) -> None:
    assert parse_target(str(Ticket(NODE)) + suffix).path == path


@pytest.mark.parametrize("form", [str(NODE), NODE.to_bytes().hex(), str(NODE).upper()])
def test_target_bare_node_id(form: str) -> None:
    target = parse_target(form + "/p")
    assert target.addr == NodeAddr(NODE)
    assert target.path == "/p"


def test_target_with_scheme() -> None:
    assert parse_target(f"https://{NODE}/a").addr.node_id == NODE
    assert parse_target(f"p2p://{Ticket(NODE)}").path == "/"


@pytest.mark.parametrize("bad", ["", "/path", "nonsense/path", "abc" * 20, f"{NODE}x/path"])
def test_target_bad(bad: str) -> None:
    with pytest.raises(InvalidTicket):
        parse_target(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=120), st.sampled_from([b"", b"\x00", b"\x01"]))
def test_arbitrary_payload_with_a_valid_checksum_raises_only_invalid_ticket(
    node: bytes, rest: bytes, prefix: bytes
) -> None:
    """Past the checksum (which random bytes almost never pass): any version-1 body either parses
    to a ticket that re-encodes to the same bytes, or raises InvalidTicket."""
    import hashlib

    payload = bytes([1]) + node + prefix + rest
    raw = payload + hashlib.sha256(payload).digest()[:4]
    try:
        ticket = Ticket.from_bytes(raw)
    except InvalidTicket as exc:
        assert str(exc)
    else:
        assert ticket.to_bytes() == raw
        assert Ticket.parse(ticket.encode()) == ticket
