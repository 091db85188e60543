"""Real UDP sockets on the running asyncio loop.

asyncio's datagram transport reads one datagram per readiness callback, so every
packet costs a full trip through the event loop.  Where the loop supports
``add_reader`` (every selector loop: Linux, macOS, uvloop), :class:`UdpSocket`
instead reads every queued datagram, up to :data:`READ_BATCH`, per readiness
callback; work the receiver schedules with ``call_soon`` (such as QUIC transmits)
then runs once per batch instead of once per packet.  Loops without
``add_reader`` (Windows' proactor loop) use the datagram transport.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from ..errors import NetworkError
from .base import Address, DatagramReceiver

__all__ = ["READ_BATCH", "UdpNetwork", "UdpSocket"]

log = logging.getLogger("asgi_p2p.net")

#: Kernel socket buffers; bulk QUIC on loopback drops packets with the defaults.
SOCKET_BUFFER = 4 * 1024 * 1024
#: Most datagrams read per readiness callback (bounds one callback's work).
READ_BATCH = 64
#: Receive buffer size: the largest UDP payload.
_MAX_UDP = 65535


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: DatagramReceiver) -> None:
        self._receiver = receiver

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            self._receiver(data, (str(addr[0]), int(addr[1])))
        except Exception:  # a receiver bug must not kill the socket
            log.exception("datagram receiver failed")

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable, ...) are normal for UDP; QUIC recovers.
        log.debug("udp error: %s", exc)


class UdpSocket:
    """A bound UDP socket (implements :class:`~asgi_p2p.net.DatagramSocket`)."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        receiver: DatagramReceiver,
        transport: asyncio.DatagramTransport | None = None,
    ) -> None:
        self._sock = sock
        self._loop = loop
        self._receiver = receiver
        self._transport = transport
        self._closed = False
        #: Datagrams the kernel refused to queue (send buffer full, unreachable, ...).
        self.send_errors = 0
        sockname = sock.getsockname()
        self._local: Address = (str(sockname[0]), int(sockname[1]))
        if transport is None:
            loop.add_reader(sock.fileno(), self._read_ready)

    @property
    def local_address(self) -> Address:
        return self._local

    def local_addresses(self) -> list[Address]:
        host, port = self._local
        if host in ("0.0.0.0", "::"):
            return _interface_addresses(port, ipv6=host == "::")
        return [self._local]

    def _read_ready(self) -> None:
        recv = self._sock.recvfrom
        receiver = self._receiver
        for _ in range(READ_BATCH):
            try:
                data, addr = recv(_MAX_UDP)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors surface here; UDP carries on
                log.debug("udp error: %s", exc)
                continue
            try:
                receiver(data, (str(addr[0]), int(addr[1])))
            except Exception:  # a receiver bug must not kill the socket
                log.exception("datagram receiver failed")
            if self._closed:
                return

    def sendto(self, data: bytes, addr: Address) -> None:
        if self._closed:
            return
        try:
            if self._transport is not None:
                self._transport.sendto(data, addr)
            else:
                self._sock.sendto(data, addr)
        except OSError as exc:  # buffer full, unreachable network, ...: UDP may drop
            self.send_errors += 1
            log.debug("sendto %s failed: %s", addr, exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        else:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


def _interface_addresses(port: int, ipv6: bool) -> list[Address]:
    """Unicast addresses of this machine's interfaces (used when bound to a wildcard)."""
    addrs: list[Address] = []
    try:
        import fcntl  # noqa: F401  (Linux/Unix only)
        import struct  # noqa: F401
    except ImportError:  # pragma: no cover
        return addrs
    for _idx, name in socket.if_nameindex():
        addr = _ipv4_of(name)
        if addr and not addr.startswith("127."):
            addrs.append((addr, port))
    return addrs


def _ipv4_of(ifname: str) -> str | None:
    import fcntl
    import struct

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", ifname[:15].encode()))  # SIOCGIFADDR
    except OSError:
        return None
    finally:
        s.close()
    return socket.inet_ntoa(packed[20:24])


class UdpNetwork:
    """The real network: :meth:`bind` opens a UDP socket on the running loop."""

    async def bind(self, host: str, port: int, receiver: DatagramReceiver) -> UdpSocket:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                except OSError:  # pragma: no cover - kernel limit
                    pass
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise NetworkError(f"cannot bind UDP {host}:{port}: {exc.strerror or exc}") from exc
        sock.setblocking(False)
        try:
            return UdpSocket(sock, loop, receiver)
        except NotImplementedError:  # no add_reader (proactor loop): one datagram per callback
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(receiver), sock=sock)
            return UdpSocket(sock, loop, receiver, transport)
