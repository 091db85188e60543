"""Session tickets sealed with a key of the node key, the 0-RTT freshness check, the strike
register and the client's ticket cache, sans-I/O."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_p2p import SecretKey
from asgi_p2p.endpoint.resume import (
    FRESHNESS_WINDOW,
    MAX_TICKET_SIZE,
    TICKET_LIFETIME,
    InvalidTicket,
    StrikeRegister,
    TicketCache,
    TicketSealer,
    TicketState,
    ticket_age_fresh,
)

NODE = SecretKey.from_seed("server node")
CLIENT = SecretKey.from_seed("client node").node_id
NOW = 1_700_000_000.0


def _state(**kw: object) -> TicketState:
    fields: dict[str, object] = {
        "resumption_secret": bytes(range(48)),
        "cipher_suite": 0x1302,
        "issued_at": NOW,
        "lifetime": TICKET_LIFETIME,
        "age_add": 0xDEADBEEF,
        "alpn": "h3",
        "client": CLIENT,
    }
    fields.update(kw)
    return TicketState(**fields)  # type: ignore[arg-type]


def test_a_sealed_ticket_opens_with_the_same_node_key_in_a_new_life() -> None:
    ticket = TicketSealer(NODE).seal(_state(), random.Random(1))
    restarted = TicketSealer(SecretKey.from_bytes(NODE.to_bytes()))  # same key, new process
    assert restarted.open(ticket, NOW + 60) == _state(issued_at=round(NOW * 1000) / 1000)
    assert len(ticket) < 200
    assert CLIENT.to_bytes() not in ticket and bytes(range(48)) not in ticket  # sealed, not signed


def test_a_ticket_of_another_node_does_not_open() -> None:
    ticket = TicketSealer(SecretKey.from_seed("another node")).seal(_state(), random.Random(1))
    with pytest.raises(InvalidTicket, match="does not open with this node's key"):
        TicketSealer(NODE).open(ticket, NOW)


def test_every_changed_byte_is_detected() -> None:
    sealer = TicketSealer(NODE)
    ticket = sealer.seal(_state(), random.Random(1))
    for i in range(len(ticket)):
        changed = bytearray(ticket)
        changed[i] ^= 0x01
        with pytest.raises(InvalidTicket):
            sealer.open(bytes(changed), NOW)


def test_tickets_expire_after_their_lifetime() -> None:
    sealer = TicketSealer(NODE)
    ticket = sealer.seal(_state(lifetime=3600), random.Random(1))
    assert sealer.open(ticket, NOW + 3600).lifetime == 3600
    with pytest.raises(InvalidTicket, match="expired"):
        sealer.open(ticket, NOW + 3601)
    with pytest.raises(InvalidTicket, match="expired"):  # issued in the future (beyond clock skew)
        sealer.open(ticket, NOW - FRESHNESS_WINDOW - 1)


@given(st.binary(max_size=MAX_TICKET_SIZE + 10))
def test_junk_never_opens(junk: bytes) -> None:
    with pytest.raises(InvalidTicket):
        TicketSealer(NODE).open(junk, NOW)


def test_two_seals_of_one_state_differ() -> None:
    sealer, rng = TicketSealer(NODE), random.Random(1)
    assert sealer.seal(_state(), rng) != sealer.seal(_state(), rng)


def test_ticket_age_must_match_within_the_freshness_window() -> None:
    state = _state()

    def obfuscated(age_s: float) -> int:
        return (int(age_s * 1000) + state.age_add) % (1 << 32)

    assert ticket_age_fresh(state, obfuscated(30.0), NOW + 30.0)
    assert ticket_age_fresh(state, obfuscated(30.0), NOW + 30.0 + FRESHNESS_WINDOW - 0.01)
    # a ClientHello recorded at age 30 s and replayed later than the window
    assert not ticket_age_fresh(state, obfuscated(30.0), NOW + 30.0 + FRESHNESS_WINDOW + 0.01)
    assert not ticket_age_fresh(state, 0, NOW + 3600)


def test_strike_register_accepts_each_client_hello_once() -> None:
    register = StrikeRegister(capacity=4)
    assert register.check_and_add(b"a" * 32, 0.0)
    assert not register.check_and_add(b"a" * 32, 1.0)
    assert register.replays == 1
    # after twice the window a replay fails the freshness check anyway: the entry goes
    assert register.check_and_add(b"a" * 32, 2 * FRESHNESS_WINDOW + 0.1)


def test_strike_register_is_bounded_and_fails_closed_when_full() -> None:
    register = StrikeRegister(capacity=3)
    for i in range(3):
        assert register.check_and_add(bytes([i]) * 32, float(i))
    assert not register.check_and_add(b"x" * 32, 3.0)  # full: early data refused
    assert register.full == 1 and len(register) == 3
    assert register.check_and_add(b"x" * 32, 2 * FRESHNESS_WINDOW + 0.5)  # the oldest expired
    assert len(register) <= 3
    with pytest.raises(ValueError):
        StrikeRegister(capacity=0)


def test_ticket_cache_is_an_lru_with_expiry() -> None:
    cache: TicketCache[str, int] = TicketCache(capacity=2)
    cache.put("a", 1, expires_at=100.0)
    cache.put("b", 2, expires_at=100.0)
    assert cache.get("a", 0.0) == 1  # a is now the most recently used
    cache.put("c", 3, expires_at=100.0)
    assert cache.get("b", 0.0) is None and len(cache) == 2
    assert cache.get("c", 99.0) == 3
    assert cache.get("c", 100.0) is None and len(cache) == 1
    cache.discard("a")
    assert len(cache) == 0
    with pytest.raises(ValueError):
        TicketCache(capacity=0)


def _client_ticket(received_at: float, lifetime: float = 3600.0) -> object:
    from asgi_p2p import aioquic_compat as hooks

    return hooks.ClockedSessionTicket(
        age_add=7,
        cipher_suite=hooks.cipher_suite(0x1302),
        not_valid_after=hooks.TICKET_EPOCH,
        not_valid_before=hooks.TICKET_EPOCH,
        resumption_secret=b"s" * 48,
        server_name=str(NODE.node_id),
        ticket=b"t" * 100,
        max_early_data_size=0xFFFFFFFF,
        other_extensions=[(57, b"params")],
        clock=lambda: NOW,
        received_at=received_at,
        lifetime=lifetime,
    )


def test_client_tickets_survive_a_dump_and_load_except_expired_ones() -> None:
    from asgi_p2p.endpoint.resume import dump_client_tickets, load_client_tickets

    fresh, old = _client_ticket(NOW - 10), _client_ticket(NOW - 4000)
    data = dump_client_tickets(CLIENT, [(NODE.node_id, "h3", fresh), (CLIENT, "h3", old)])  # type: ignore[list-item]
    loaded = load_client_tickets(data, CLIENT, lambda: NOW + 5)
    assert [(n, a) for n, a, _ in loaded] == [(NODE.node_id, "h3")]
    (_, _, ticket) = loaded[0]
    assert ticket.ticket == b"t" * 100 and ticket.resumption_secret == b"s" * 48
    assert ticket.other_extensions == [(57, b"params")] and ticket.max_early_data_size == 0xFFFFFFFF
    assert ticket.obfuscated_age == 15_000 + 7  # its age counts by the loading clock
    with pytest.raises(ValueError, match=r"not .*'s"):  # they resume as CLIENT: nobody else may use them
        load_client_tickets(data, NODE.node_id, lambda: NOW + 5)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b'{"version": 2, "tickets": []}',
        b'{"version": 1, "client": "x", "tickets": []}',
        b'{"version": 1, "client": "%s", "tickets": [{}]}' % str(CLIENT).encode(),
        b"x" * (1 << 21),
    ],
)
def test_loading_anything_else_is_a_clear_error(data: bytes) -> None:
    from asgi_p2p.endpoint.resume import load_client_tickets

    with pytest.raises(ValueError):
        load_client_tickets(data, CLIENT, lambda: NOW)
