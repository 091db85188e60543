"""Path selection, in one place: pure functions, tested alone (``tests/paths/test_select.py``).

* :func:`best_direct` - which probed direct path a peer's connections use (lowest
  RTT, with hysteresis);
* :func:`select_route` - where one connection's packets go: that direct path, the
  address it was dialed to or accepted from, the relay, or both during a switch;
* :func:`select_datagram_size` - how large the connection's datagrams may be on
  that route.

The relay is the backup that is always usable for a full-size packet: a relay client
takes packets (``can_send``) only while its relay connection carries a
:data:`QUIC_MIN_DATAGRAM_SIZE` (1200-byte) QUIC packet.  Whenever any of a connection's
packets may go through the relay, the connection builds datagrams that fit it: exactly
1200 bytes until the handshake is done (Initials may not be smaller, and 1200 fits every
connected relay client, ours and the peer's, whatever ``max_datagram_size`` either node
has), then the base size, or less if our relay connection or the peer's (the relay's
TOO_LARGE) carries less; through the relay alone, up to the size a probe through the
relay confirmed (on a relay's data plane, see ``PathProber.relay_capacity``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..identity import NodeId
from ..net.base import Address

__all__ = ["MIN_RELAYED_SIZE", "QUIC_MIN_DATAGRAM_SIZE", "best_direct", "select_datagram_size", "select_route"]

#: The smallest QUIC datagram (RFC 9000 section 14.1): every datagram carrying an Initial
#: packet is at least this large, so every relay connection in use must carry it.
QUIC_MIN_DATAGRAM_SIZE = 1200
#: After the handshake a relayed connection never builds datagrams smaller than this
#: (only Initials must be 1200 bytes; aioquic works down to here).
MIN_RELAYED_SIZE = 1000


def best_direct(
    live: Sequence[tuple[Address, float]],
    current: tuple[Address, float] | None,
    switch_ratio: float,
) -> tuple[Address | None, bool]:
    """The direct path to use among ``live`` ``(address, smoothed RTT)`` paths.

    ``current`` is the path in use, if it is still live.  Returns ``(address, better)``:
    the chosen address (None: no live path) and whether it replaces a live current
    path because its RTT is clearly lower (below ``switch_ratio`` times the current
    one: hysteresis, so two similar paths do not flap).  Ties go to the lower address,
    so the choice is deterministic.
    """
    best = min(live, key=lambda p: (p[1], p[0]), default=None)
    if current is not None and best is not None:
        if best[0] == current[0] or best[1] >= current[1] * switch_ratio:
            return current[0], False
        return best[0], True
    return (best[0] if best is not None else None), False


def select_route(
    *,
    best: Address | None,
    dialed: Address | None,
    relay: NodeId | None,
    careful: bool,
    dialed_silent: bool,
) -> tuple[Address | None, NodeId | None]:
    """Where a connection's packets go: ``(direct address or None, node via the relay or None)``.

    ``best``: the peer's confirmed direct path (a probe was answered on it), if any.
    ``dialed``: the address the connection was dialed to or accepted from (None if it
    came through the relay).  ``relay``: the peer's node id if the relay can carry this
    connection now (it takes packets, and the connection is not itself to the relay), else None.
    ``careful``: we dialed and punch carefully (a relay is configured), so an unconfirmed
    dialed address gets no packets.  ``dialed_silent``: the dialed address was probed
    and did not answer (failed, or silent for the grace period).

    * a confirmed direct path carries everything, alone;
    * else the dialed address *and* the relay (the first packets get through whichever
      way works), except that a careful dialer waits for a signed probe to confirm the
      address (it may be another node on our own LAN, or a NAT that a first full-TTL
      packet would make remap the peer's flow), and an address that stays silent stops
      getting copies;
    * else the relay; with neither, ``(None, None)``: packets are counted and dropped.
    """
    if best is not None:
        return best, None
    if dialed is None:
        return None, relay
    if relay is not None and (careful or dialed_silent):
        return None, relay
    return dialed, relay


def select_datagram_size(
    target: tuple[Address | None, NodeId | None],
    *,
    direct_size: Callable[[Address], int],
    base: int,
    relay_fit: int | None,
    established: bool,
    relay_capacity: int | None = None,
    relay_size: int | None = None,
) -> tuple[int, bool]:
    """The datagram size for a connection sending to ``target``, and whether it is below ``base``.

    A direct-only route carries what its path was probed to carry (``direct_size``).
    A route that includes the relay: before the handshake is done exactly
    :data:`QUIC_MIN_DATAGRAM_SIZE` (Initials may not be smaller, and every connected
    relay client carries it, so a dial through the relay works whatever either node's
    ``max_datagram_size``); after it the base size, or less (not below
    :data:`MIN_RELAYED_SIZE`) when our relay connection carries at most
    ``relay_capacity`` bytes per packet or the relay said the peer's carries at most
    ``relay_fit``.  A route through the relay alone grows to ``relay_size`` (a size
    probe through the relay confirmed it, both relay legs included) under the same limits.
    """
    direct, relayed = target
    size = direct_size(direct) if direct is not None and relayed is None else base
    if relayed is not None:
        if not established:
            size = QUIC_MIN_DATAGRAM_SIZE
        else:
            if direct is None and relay_size is not None:
                size = max(size, relay_size)
            for limit in (relay_fit, relay_capacity):
                if limit is not None:
                    size = min(size, max(limit, MIN_RELAYED_SIZE))
    return size, size < base
