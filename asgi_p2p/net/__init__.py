"""Datagram networks: the one small interface the endpoint needs below QUIC.

:class:`UdpNetwork` is real UDP; :mod:`asgi_p2p.sim` provides a simulated
network implementing the same :class:`DatagramNetwork` protocol.
:mod:`asgi_p2p.net.addr` is the binary address codec every wire format above
shares (disco messages, relay frames, node records).
"""

from __future__ import annotations

from .base import Address, DatagramNetwork, DatagramReceiver, DatagramSocket
from .udp import UdpNetwork

__all__ = ["Address", "DatagramNetwork", "DatagramReceiver", "DatagramSocket", "UdpNetwork"]
