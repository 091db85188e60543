"""Counters of an endpoint's paths layer (plain integers, read by metrics at scrape time).

One :class:`PathStats` per :class:`~asgi_p2p.paths.router.Router`, shared by its routes,
peers and probers, so that counts outlive the connections that made them.  Only bounded
keys: path kinds (``direct``, ``relay``) and disco outcomes, never a node id.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

__all__ = ["PathStats"]


@dataclass(slots=True)
class PathStats:
    """Datagrams, path switches and disco probes of one endpoint.

    ``direct`` counts every datagram the UDP socket receives, and every one the
    connections (the relay connection's own included) and path probes send on it (the
    endpoint's stateless answers, Retry, refusals and resets, are not counted);
    ``relay`` counts the packets exchanged with peers through the relay (carried inside
    the relay connection's datagrams).
    """

    direct_packets_sent: int = 0
    direct_bytes_sent: int = 0
    direct_packets_received: int = 0
    direct_bytes_received: int = 0
    relay_packets_sent: int = 0
    relay_bytes_sent: int = 0
    relay_packets_received: int = 0
    relay_bytes_received: int = 0
    #: a peer's chosen path changed, by the kind of the new one (``direct`` or ``relay``)
    path_switches: collections.Counter[str] = field(default_factory=collections.Counter)
    #: direct paths an authenticated transport handshake proved live (no disco PING/PONG needed)
    handshake_validated_paths: int = 0
    #: disco PINGs sent (path probes, size probes included)
    disco_pings_sent: int = 0
    #: disco PINGs answered with a PONG
    disco_pings_answered: int = 0
    #: disco PONGs that answered one of our PINGs
    disco_pongs_received: int = 0
    #: disco packets refused by a peer's prober, by reason: ``forged`` (bad signature or
    #: sender), ``replayed``, ``stale``, ``malformed``, ``unexpected`` (unknown or misrouted PONGs)
    disco_rejected: collections.Counter[str] = field(default_factory=collections.Counter)
