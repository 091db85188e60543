"""The datagram network interface (real UDP and the simulator implement it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

#: An (IPv4/IPv6 host, port) pair.
Address = tuple[str, int]

#: Called once per received datagram with (payload, source address).
DatagramReceiver = Callable[[bytes, Address], None]


@runtime_checkable
class DatagramSocket(Protocol):
    """One bound datagram socket."""

    @property
    def local_address(self) -> Address: ...

    def sendto(self, data: bytes, addr: Address) -> None:
        """Queue one datagram; never blocks, may drop (it is UDP).

        A socket may also offer ``sendmany(datagrams, addr)``, several datagrams to one
        address in order (:class:`~asgi_p2p.net.udp.UdpSocket` does, with segmentation
        offload); the paths layer uses it where it exists, else ``sendto`` each.  And
        ``hold()`` / ``release()``: collect what is sent in between and send it in order at
        ``release`` (UdpSocket by ``sendmmsg``); an endpoint's transmit pass uses them where
        they exist.
        """

    def local_addresses(self) -> list[Address]:
        """Addresses at which peers may reach this socket (for tickets)."""

    def close(self) -> None: ...


class DatagramNetwork(Protocol):
    """A factory of bound datagram sockets."""

    async def bind(self, host: str, port: int, receiver: DatagramReceiver) -> DatagramSocket:
        """Bind a socket; ``receiver`` is called for each arriving datagram."""

    def wall_clock_offset(self) -> float:
        """Seconds to add to the running loop's ``time()`` to get Unix time.

        Signed path probes carry a clock peers share.  A real network reads the
        system clock (once per endpoint); the simulator returns a constant, so the
        library itself never reads the wall clock.
        """
