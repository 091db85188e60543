"""Path selection, in one place: pure functions, tested alone (``tests/paths/test_select.py``).

* :func:`best_direct` - which probed direct path a peer's connections use (lowest
  RTT, with hysteresis);
* :func:`select_route` - where one connection's packets go: that direct path, the
  address it was dialed to or accepted from, the relay, or both during a switch;
* :func:`select_datagram_size` - how large the connection's datagrams may be on
  that route.

The relay is the backup that is always usable for a full-size packet: whenever any
of a connection's packets may go through it, the connection builds datagrams of the
base size (or smaller, if the relay said the peer's own relay connection carries less).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..identity import NodeId
from ..net.base import Address

__all__ = ["best_direct", "select_datagram_size", "select_route"]


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
    connection now (connected, and the connection is not itself to the relay), else None.
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
) -> tuple[int, bool]:
    """The datagram size for a connection sending to ``target``, and whether it is below ``base``.

    A direct-only route carries what its path was probed to carry (``direct_size``);
    any route that includes the relay carries the base size, or less when the relay
    said the peer's relay connection carries at most ``relay_fit`` bytes (after the
    handshake only: 1-RTT packets may be smaller than 1200 bytes, Initials may not).
    """
    direct, relayed = target
    size = direct_size(direct) if direct is not None and relayed is None else base
    if relayed is not None and relay_fit is not None and established:
        size = min(size, relay_fit)
    return size, size < base
