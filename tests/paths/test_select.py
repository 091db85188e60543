"""Path selection alone (asgi_p2p.paths.select): no sockets, no QUIC, no prober."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_p2p.identity import SecretKey
from asgi_p2p.paths.select import (
    MIN_RELAYED_SIZE,
    QUIC_MIN_DATAGRAM_SIZE,
    best_direct,
    select_datagram_size,
    select_route,
)

PEER = SecretKey.from_seed("peer").node_id
LAN = ("192.168.1.7", 4433)
PUBLIC = ("203.0.113.5", 61000)
OTHER = ("198.51.100.9", 4433)


# -- best_direct ------------------------------------------------------------------


def test_no_live_path_means_no_direct_path() -> None:
    assert best_direct([], None, 0.8) == (None, False)


def test_the_lowest_rtt_wins_when_nothing_is_in_use() -> None:
    assert best_direct([(PUBLIC, 0.030), (LAN, 0.002)], None, 0.8) == (LAN, False)


def test_ties_go_to_the_lower_address() -> None:
    assert best_direct([(PUBLIC, 0.01), (LAN, 0.01)], None, 0.8) == (LAN, False)


def test_hysteresis_keeps_the_current_path_unless_the_new_one_is_clearly_better() -> None:
    current = (PUBLIC, 0.030)
    # 25 ms is better, but not below 0.8 x 30 ms = 24 ms: keep the current path
    assert best_direct([current, (OTHER, 0.025)], current, 0.8) == (PUBLIC, False)
    # 20 ms is: switch, and say it was for a lower RTT
    assert best_direct([current, (OTHER, 0.020)], current, 0.8) == (OTHER, True)


def test_the_current_path_alone_is_kept() -> None:
    assert best_direct([(PUBLIC, 0.030)], (PUBLIC, 0.030), 0.8) == (PUBLIC, False)


paths = st.lists(
    st.tuples(
        st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.2", "192.168.1.7", "203.0.113.5"]), st.integers(1, 65535)),
        st.floats(0.0001, 2.0),
    ),
    unique_by=lambda p: p[0],
    max_size=6,
)


@given(paths, st.floats(0.1, 1.0))
def test_a_chosen_path_stays_chosen(live: list[tuple[tuple[str, int], float]], ratio: float) -> None:
    """Choosing again with the same measurements never flaps to another path."""
    first, _ = best_direct(live, None, ratio)
    if first is None:
        assert not live
        return
    rtt = dict(live)[first]
    assert best_direct(live, (first, rtt), ratio) == (first, False)
    assert rtt == min(r for _, r in live)


# -- select_route -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("best", "dialed", "relay", "careful", "silent", "expected"),
    [
        # a confirmed direct path carries everything, alone
        (PUBLIC, LAN, PEER, True, True, (PUBLIC, None)),
        (PUBLIC, None, None, False, False, (PUBLIC, None)),
        # accepted through the relay (no dialed address): the relay, or nothing
        (None, None, PEER, False, False, (None, PEER)),
        (None, None, None, False, False, (None, None)),
        # an unconfirmed dialed address and the relay both get the first packets
        (None, LAN, PEER, False, False, (LAN, PEER)),
        # ... unless we dial carefully (it may be another node on our LAN) ...
        (None, LAN, PEER, True, False, (None, PEER)),
        # ... or it stayed silent when probed
        (None, LAN, PEER, False, True, (None, PEER)),
        # without a relay the dialed address is all there is, silent or not
        (None, LAN, None, True, True, (LAN, None)),
        (None, LAN, None, False, False, (LAN, None)),
    ],
)
def test_select_route(
    best: tuple[str, int] | None,
    dialed: tuple[str, int] | None,
    relay: object,
    careful: bool,
    silent: bool,
    expected: tuple[object, object],
) -> None:
    got = select_route(best=best, dialed=dialed, relay=PEER if relay else None, careful=careful, dialed_silent=silent)
    assert got == expected


# -- select_datagram_size -----------------------------------------------------------


def _probed(addr: tuple[str, int]) -> int:
    return {LAN: 8952, PUBLIC: 1452}[addr]


def test_a_direct_only_route_uses_the_probed_size() -> None:
    assert select_datagram_size((LAN, None), direct_size=_probed, base=1200, relay_fit=None, established=True) == (
        8952,
        False,
    )


def test_any_relayed_route_uses_the_base_size() -> None:
    for target in ((LAN, PEER), (None, PEER)):
        assert select_datagram_size(target, direct_size=_probed, base=1200, relay_fit=None, established=True) == (
            1200,
            False,
        )


def test_a_smaller_relay_path_shrinks_established_connections_only() -> None:
    kw = {"direct_size": _probed, "base": 1200, "relay_fit": 1136}
    assert select_datagram_size((None, PEER), established=True, **kw) == (1136, True)  # type: ignore[arg-type]
    # Initials must be 1200 bytes: a handshaking connection keeps the base size
    assert select_datagram_size((None, PEER), established=False, **kw) == (1200, False)  # type: ignore[arg-type]
    # the relay fit does not touch a direct-only route
    assert select_datagram_size((LAN, None), established=True, **kw) == (8952, False)  # type: ignore[arg-type]


def test_handshakes_through_the_relay_use_the_quic_minimum_whatever_the_base() -> None:
    # a node building 1452-byte datagrams: its Initials through the relay are 1200 bytes,
    # which every connected relay client carries (ours and the peer's)
    for target in ((LAN, PEER), (None, PEER)):
        for fit in (None, 1136, 1300):
            assert select_datagram_size(
                target, direct_size=_probed, base=1452, relay_fit=fit, established=False, relay_capacity=1388
            ) == (QUIC_MIN_DATAGRAM_SIZE, True)
    # a direct-only handshake keeps the base
    assert select_datagram_size((LAN, None), direct_size=_probed, base=1452, relay_fit=None, established=False) == (
        8952,
        False,
    )


def test_established_relayed_connections_fit_our_relay_connection_and_the_peers() -> None:
    kw = {"direct_size": _probed, "base": 1452, "established": True}
    # our relay connection carries 1388-byte packets: a 1452 base shrinks to it
    assert select_datagram_size((None, PEER), relay_fit=None, relay_capacity=1388, **kw) == (1388, True)  # type: ignore[arg-type]
    # the smaller of ours and the peer's (the relay's TOO_LARGE)
    assert select_datagram_size((None, PEER), relay_fit=1200, relay_capacity=1388, **kw) == (1200, True)  # type: ignore[arg-type]
    # a relay connection carrying more than the base does not grow the datagrams
    assert select_datagram_size((LAN, PEER), relay_fit=None, relay_capacity=8000, **kw) == (1452, False)  # type: ignore[arg-type]
    # never below MIN_RELAYED_SIZE
    assert select_datagram_size((None, PEER), relay_fit=500, relay_capacity=None, **kw) == (MIN_RELAYED_SIZE, True)  # type: ignore[arg-type]
    # a direct-only route ignores both
    assert select_datagram_size((LAN, None), relay_fit=1200, relay_capacity=1200, **kw) == (8952, False)  # type: ignore[arg-type]
