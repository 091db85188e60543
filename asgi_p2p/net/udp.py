"""Real UDP sockets on the running asyncio loop.

asyncio's datagram transport reads one datagram per readiness callback, so every
packet costs a full trip through the event loop.  Where the loop supports
``add_reader`` (every selector loop: Linux, macOS, uvloop), :class:`UdpSocket`
instead reads every queued datagram, up to :data:`READ_BATCH`, per readiness
callback; work the receiver schedules with ``call_soon`` (such as QUIC transmits)
then runs once per batch instead of once per packet.  Loops without
``add_reader`` (Windows' proactor loop) use the datagram transport.

Offload (Linux): the socket reads with ``UDP_GRO``, so the kernel may hand it several
datagrams of one sender in one read (cut apart here by the segment size it reports);
with ``gso=True`` (``NetworkConfig.udp_offload = "gso+gro"``), :meth:`UdpSocket.sendmany`
also hands each run of same-size datagrams to one destination to the kernel in one
``sendmsg`` with ``UDP_SEGMENT`` (GSO: the kernel, or the network card, cuts it into the
datagrams).  Both are checked when the socket is bound and turned off for the socket
when the kernel refuses them (older kernels, a device without checksum offload);
everything then goes one datagram per system call, as without them.

Batched sends (Linux, unless ``udp_offload = "off"``): between :meth:`UdpSocket.hold` and
:meth:`UdpSocket.release` (an endpoint's transmit pass over its connections) the socket
collects what is sent and releases it with ``sendmmsg``, up to :data:`BATCH_MAX` datagrams
to any destinations per system call, through ctypes (Python's socket module has no
``sendmmsg``).  Fewer than :data:`BATCH_MIN` go one ``sendto`` each, which costs less CPU
there (``benchmarks/sendmmsg.py``).  Whatever a ``sendmmsg`` did not send (a full send
buffer, an error) goes on one ``sendto`` each, in order, as without batching.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence

from ..errors import NetworkError
from .base import Address, DatagramReceiver

__all__ = [
    "BATCH_MAX",
    "BATCH_MIN",
    "GSO_MAX_SEGMENTS",
    "IFADDRS_TTL",
    "READ_BATCH",
    "UdpNetwork",
    "UdpSocket",
    "set_dont_fragment",
]

log = logging.getLogger("asgi_p2p.net")

#: Kernel socket buffers; bulk QUIC on loopback drops packets with the defaults.
SOCKET_BUFFER = 4 * 1024 * 1024
#: How long the interfaces' addresses read for a socket bound to a wildcard address are
#: reused, seconds (:meth:`UdpSocket.local_addresses`).
IFADDRS_TTL = 1.0
#: Most datagrams read per readiness callback (bounds one callback's work).
READ_BATCH = 64
#: Receive buffer size: the largest UDP payload.
_MAX_UDP = 65535
#: Most datagrams in one segmentation-offload send (the kernel's UDP_MAX_SEGMENTS is 64;
#: more than that, or a longer run, goes in several sends).
GSO_MAX_SEGMENTS = 64
#: Most bytes in one segmentation-offload send (an IPv4 datagram's payload limit, 65,507,
#: less some room for the kernel's own checks).
_GSO_MAX_BYTES = 65000
# Linux <linux/udp.h> (Python 3.11 does not export them)
_SOL_UDP = getattr(socket, "SOL_UDP", 17)
_UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
_UDP_GRO = getattr(socket, "UDP_GRO", 104)
_GRO_ANCILLARY = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
#: a plain int: ``flags & socket.MSG_TRUNC`` (an IntFlag) costs an enum operation per read
_MSG_TRUNC = int(getattr(socket, "MSG_TRUNC", 0x20))
# errors that say the socket or its device cannot segment at all (not: this one send failed)
_NO_GSO_ERRNOS = frozenset({errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
#: Most datagrams in one ``sendmmsg`` (a longer held batch goes in several).
BATCH_MAX = 64
#: Fewest held datagrams that go in one ``sendmmsg``: below, ``sendto`` each costs less CPU
#: (building the message arrays in Python costs more than the system calls it saves; on
#: 127.0.0.1, 1200-byte datagrams: 1.08x sendto's CPU per datagram at 4, 0.88x at 16, 0.81x at
#: 100, benchmarks/sendmmsg.py).
BATCH_MIN = 8
# errors that say sendmmsg itself is unusable here (not: this datagram failed)
_NO_SENDMMSG_ERRNOS = frozenset({errno.ENOSYS, errno.EOPNOTSUPP})
# Linux <linux/in.h>, <linux/in6.h> (Python does not export all of them)
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
_IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
_IPV6_PMTUDISC_DO = getattr(socket, "IPV6_PMTUDISC_DO", 2)


def set_dont_fragment(sock: socket.socket) -> bool:
    """Linux: send every datagram with the don't-fragment bit (IP_PMTUDISC_DO); False elsewhere.

    Datagram size probes (RFC 8899) must never be fragmented: a fragmented probe
    that arrives says nothing about what the path carries in one packet.  A
    datagram larger than the route's known MTU then fails in ``sendto``
    (EMSGSIZE, counted in ``send_errors``), like a probe lost on the path.
    """
    if not sys.platform.startswith("linux"):
        return False
    ok = False
    if sock.family == socket.AF_INET6:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_DO)
            ok = True
        except OSError:  # pragma: no cover - kernel without it
            pass
    try:  # IPv4 sockets, and IPv4-mapped traffic of a dual-stack IPv6 socket
        sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
        ok = True
    except OSError:
        pass
    return ok


def enable_offload(sock: socket.socket, *, gso: bool, gro: bool) -> tuple[bool, bool]:
    """Linux: check that the kernel segments UDP sends (GSO) and turn on coalesced reads (GRO).

    Returns (gso, gro): whether :meth:`UdpSocket.sendmany` may use ``UDP_SEGMENT`` and
    whether reads may return several datagrams at once, of what was asked.  (False,
    False) elsewhere.
    """
    if not sys.platform.startswith("linux") or not hasattr(sock, "sendmsg"):
        return False, False
    if gso:
        try:
            sock.getsockopt(_SOL_UDP, _UDP_SEGMENT)  # kernels before 4.18 do not know it
        except OSError:
            gso = False
    if gro:
        try:
            sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)  # since 5.0
            gro = _GRO_ANCILLARY > 0
        except OSError:
            gro = False
    return gso, gro


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _libc_sendmmsg() -> Callable[[int, int, int, int], int] | None:
    """The C library's ``sendmmsg`` (Linux, glibc 2.14 / musl 1.1.3 and later), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sendmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SENDMMSG = _libc_sendmmsg()


class _MultiSender:
    """``sendmmsg`` of up to :data:`BATCH_MAX` datagrams to any destinations (one socket).

    The message headers are written once, each pointing at its own ``sockaddr`` slot and
    ``iovec``; a send copies the destinations in (their ``sockaddr`` bytes, cached per
    address) and packs the iovecs, which point into the payloads joined into one buffer.
    """

    __slots__ = (
        "_at",
        "_cache",
        "_call",
        "_fd",
        "_iov_packers",
        "_iovs",
        "_msgs",
        "_name_size",
        "_names",
        "_names_at",
        "_v6",
    )

    #: destinations whose sockaddr bytes are kept (then the cache starts again)
    _CACHED = 4096

    def __init__(self, call: Callable[[int, int, int, int], int], sock: socket.socket) -> None:
        self._call = call
        self._fd = sock.fileno()
        self._v6 = sock.family == socket.AF_INET6
        self._name_size = 28 if self._v6 else 16  # sizeof(struct sockaddr_in6 / sockaddr_in)
        self._msgs = (_Mmsghdr * BATCH_MAX)()
        self._at = ctypes.addressof(self._msgs)
        self._iovs = (_Iovec * BATCH_MAX)()
        self._names = ctypes.create_string_buffer(self._name_size * BATCH_MAX)
        self._names_at = ctypes.addressof(self._names)
        for i in range(BATCH_MAX):
            header = self._msgs[i].msg_hdr
            header.msg_name = self._names_at + i * self._name_size
            header.msg_namelen = self._name_size
            header.msg_iov = ctypes.addressof(self._iovs[i])
            header.msg_iovlen = 1
        self._iov_packers: dict[int, struct.Struct] = {}
        self._cache: dict[Address, bytes] = {}

    def _name(self, addr: Address) -> bytes:
        """``addr`` as a ``sockaddr``; ValueError if it is not an IP address of the socket's family."""
        name = self._cache.get(addr)
        if name is not None:
            return name
        host, port = addr
        try:
            if self._v6:
                packed = socket.inet_pton(socket.AF_INET6, host)
                name = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + packed + bytes(4)
            else:
                packed = socket.inet_pton(socket.AF_INET, host)
                name = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + packed + bytes(8)
        except (OSError, TypeError, struct.error) as exc:
            raise ValueError(f"cannot send to {addr!r} with sendmmsg: {exc}") from exc
        if len(self._cache) >= self._CACHED:
            self._cache.clear()
        self._cache[addr] = name
        return name

    def send(self, batch: Sequence[tuple[bytes, Address]]) -> int:
        """Send ``batch`` (2 to :data:`BATCH_MAX` datagrams) in one ``sendmmsg``: how many it sent.

        Raises OSError when it sent none (the error of the first datagram, or of the call),
        ValueError for a destination it cannot encode (then nothing was sent).
        """
        n = len(batch)
        if not 2 <= n <= BATCH_MAX:  # the name and iovec buffers hold BATCH_MAX entries
            raise ValueError(f"sendmmsg batch of {n} datagrams: 2 to {BATCH_MAX}")
        name = self._name
        names = b"".join([name(addr) for _, addr in batch])
        payloads = [data for data, _ in batch]
        joined = b"".join(payloads)  # kept alive until the call returns: the iovecs point into it
        at = ctypes.cast(ctypes.c_char_p(joined), ctypes.c_void_p).value or 0
        ctypes.memmove(self._names_at, names, len(names))
        flat: list[int] = []
        for data in payloads:
            size = len(data)
            flat += (at, size)
            at += size
        packer = self._iov_packers.get(n)
        if packer is None:
            packer = self._iov_packers[n] = struct.Struct("PN" * n)
        packer.pack_into(self._iovs, 0, *flat)
        sent = self._call(self._fd, self._at, n, 0)
        if sent < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return sent


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
        *,
        gso: bool = False,
        gro: bool = False,
        batch: bool = False,
    ) -> None:
        self._sock = sock
        self._loop = loop
        self._receiver = receiver
        self._transport = transport
        self._closed = False
        #: Datagrams the kernel refused to queue (send buffer full, unreachable, ...).
        self.send_errors = 0
        #: Sends with segmentation offload (each carried several datagrams), and the datagrams
        #: they carried; reads that returned several coalesced datagrams, and those datagrams.
        self.gso_sends = 0
        self.gso_datagrams = 0
        self.gro_reads = 0
        self.gro_datagrams = 0
        # segmentation offload in use (see enable_offload); off for good once the kernel refuses it
        self._gso = gso and transport is None
        self._gro = gro and transport is None
        #: sendmmsg calls (each sent several datagrams) and the datagrams they sent
        self.batch_sends = 0
        self.batch_datagrams = 0
        # batched sends (None: not here, or off for good once the kernel refused sendmmsg), and
        # what is held for them between hold() and release() (None: not holding)
        self._multi = _MultiSender(_SENDMMSG, sock) if batch and transport is None and _SENDMMSG is not None else None
        self._held: list[tuple[bytes, Address]] | None = None
        sockname = sock.getsockname()
        self._local: Address = (str(sockname[0]), int(sockname[1]))
        self._v6 = sock.family == socket.AF_INET6
        # (read at, addresses) of the interfaces, for a socket bound to a wildcard address
        self._ifaddrs: tuple[float, list[Address]] | None = None
        try:
            self._default_ttl = sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
        except OSError:  # pragma: no cover
            self._default_ttl = 64
        if transport is None:
            loop.add_reader(sock.fileno(), self._read_ready)

    @property
    def local_address(self) -> Address:
        return self._local

    def local_addresses(self) -> list[Address]:
        host, port = self._local
        if host in ("0.0.0.0", "::"):
            # the interfaces' addresses, read again at most every IFADDRS_TTL seconds: a dial
            # asks for them several times before its first Initial leaves
            now = self._loop.time()
            cached = self._ifaddrs
            if cached is None or not cached[0] <= now < cached[0] + IFADDRS_TTL:
                cached = self._ifaddrs = (now, _interface_addresses(port, ipv6=host == "::"))
            return list(cached[1])
        return [self._local]

    @property
    def offload(self) -> tuple[bool, bool]:
        """(GSO, GRO): whether sends may be segmented by the kernel and reads coalesced now."""
        return self._gso, self._gro

    @property
    def batching(self) -> bool:
        """Whether what is sent between :meth:`hold` and :meth:`release` goes by ``sendmmsg``."""
        return self._multi is not None

    def hold(self) -> None:
        """Collect what is sent from now on, for :meth:`release` to send in few system calls.

        For a pass over many connections' transmits; without batched sends, nothing changes.
        """
        if self._multi is not None and self._held is None and not self._closed:
            self._held = []

    def release(self) -> None:
        """Send what was collected since :meth:`hold`, in order, and send directly again."""
        held = self._held
        if held is None:
            return
        self._held = None
        if len(held) >= BATCH_MIN:
            self._send_held(held)
            return
        sendto = self._sock.sendto  # a few: one sendto each (what _send_held would do)
        for data, addr in held:
            try:
                sendto(data, addr)
            except OSError as exc:  # buffer full, unreachable network, ...: UDP may drop
                self.send_errors += 1
                log.debug("sendto %s failed: %s", addr, exc)

    def _send_held(self, held: list[tuple[bytes, Address]]) -> None:
        for i in range(0, len(held), BATCH_MAX):
            chunk = held[i : i + BATCH_MAX]
            multi = self._multi
            sent = 0
            if multi is not None and len(chunk) >= BATCH_MIN and not self._closed:
                try:
                    sent = multi.send(chunk)
                except (ValueError, TypeError) as exc:  # an address sendmmsg cannot take: sendto meets it
                    log.debug("%s", exc)
                except OSError as exc:
                    if exc.errno in _NO_SENDMMSG_ERRNOS:
                        self._multi = None
                        log.info("sendmmsg refused on %s:%d (%s): one datagram per call", *self._local, exc)
                    # else the first datagram's error (a full buffer, EMSGSIZE ...): sendto meets it again
                else:
                    self.batch_sends += 1
                    self.batch_datagrams += sent
            for data, addr in chunk[sent:]:  # what sendmmsg did not send, in order
                self._send_now(data, addr)

    def _read_ready(self) -> None:
        if self._gro:
            self._read_coalesced()
            return
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
                receiver(data, addr if len(addr) == 2 else (addr[0], addr[1]))
            except Exception:  # a receiver bug must not kill the socket
                log.exception("datagram receiver failed")
            if self._closed:
                return

    def _read_coalesced(self) -> None:
        """Like the plain read loop, with reads that may hold several datagrams (UDP_GRO).

        The kernel coalesces only datagrams of one sender of the same size (the last may
        be shorter) and says their size in a control message; one read holds at most 64
        KiB.  A readiness callback delivers about :data:`READ_BATCH` datagrams, as without
        GRO (it stops reading once that many were delivered; the last read may add up to
        63 more), so one callback's work stays bounded.
        """
        recvmsg = self._sock.recvmsg
        receiver = self._receiver
        delivered = 0
        while delivered < READ_BATCH:
            try:
                data, ancdata, flags, addr = recvmsg(_MAX_UDP, _GRO_ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors surface here; UDP carries on
                log.debug("udp error: %s", exc)
                delivered += 1
                continue
            # an IPv4 socket's (host, port) as it is; an IPv6 one's is (host, port, flow, scope)
            source = addr if len(addr) == 2 else (addr[0], addr[1])
            size = 0
            for level, kind, value in ancdata:
                if level == _SOL_UDP and kind == _UDP_GRO and len(value) >= 4:
                    size = struct.unpack("=i", value[:4])[0]
            if flags & _MSG_TRUNC:  # cannot happen within 64 KiB; never deliver a cut datagram
                log.debug("udp read from %s:%d truncated, dropped", *source)
                delivered += 1
                continue
            if 0 < size < len(data):
                self.gro_reads += 1
                view = memoryview(data)
                datagrams = [bytes(view[i : i + size]) for i in range(0, len(data), size)]
                self.gro_datagrams += len(datagrams)
            else:
                datagrams = [data]
            for datagram in datagrams:
                delivered += 1
                try:
                    receiver(datagram, source)
                except Exception:  # a receiver bug must not kill the socket
                    log.exception("datagram receiver failed")
                if self._closed:
                    return

    def sendmany(self, datagrams: Sequence[bytes], addr: Address) -> None:
        """Send ``datagrams`` to ``addr``, in order; never blocks, may drop (it is UDP).

        With segmentation offload, each run of datagrams of one size (the last of a run may
        be shorter), up to :data:`GSO_MAX_SEGMENTS` of them and 65,000 bytes, goes in one
        ``sendmsg``; without it, or for a single datagram, one ``sendto`` each (held for a
        batch while the socket holds, see :meth:`hold`).
        """
        if not self._gso or len(datagrams) < 2:
            for data in datagrams:
                self.sendto(data, addr)
            return
        held = self._held
        if held:  # what was held before goes first
            self._held = []
            self._send_held(held)
        n = len(datagrams)
        i = 0
        while i < n and self._gso:
            size = len(datagrams[i])
            j = i + 1
            total = size
            # a run: equal sizes, then at most one shorter datagram ending it
            while j < n and j - i < GSO_MAX_SEGMENTS and total + len(datagrams[j]) <= _GSO_MAX_BYTES:
                length = len(datagrams[j])
                if length > size:
                    break
                total += length
                j += 1
                if length < size:
                    break
            if j - i == 1:
                self.sendto(datagrams[i], addr)
            else:
                self._send_segmented(datagrams[i:j], size, addr)
            i = j
        for data in datagrams[i:]:  # the kernel refused offload on the way: the rest one by one
            self.sendto(data, addr)

    def _send_segmented(self, run: Sequence[bytes], size: int, addr: Address) -> None:
        if self._closed:
            return
        try:
            self._sock.sendmsg([b"".join(run)], [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", size))], 0, addr)
        except OSError as exc:
            if exc.errno in _NO_GSO_ERRNOS:
                self._gso = False
                log.info(
                    "UDP segmentation offload refused on %s:%d (%s): sending one datagram per call", *self._local, exc
                )
            elif not isinstance(exc, BlockingIOError):
                # e.g. EMSGSIZE or EINVAL for segments larger than the route's MTU: each
                # datagram alone meets the error (or not) as it would without offload
                log.debug("segmented send to %s:%d failed (%s): one datagram per call", *addr, exc)
            else:  # the send buffer is full: UDP drops the lot
                self.send_errors += len(run)
                log.debug("sendto %s failed: %s", addr, exc)
                return
            for data in run:
                self.sendto(data, addr)
            return
        self.gso_sends += 1
        self.gso_datagrams += len(run)

    def sendto(self, data: bytes, addr: Address) -> None:
        held = self._held
        if held is not None:
            held.append((data, addr))
            if len(held) >= BATCH_MAX:
                self._held = []
                self._send_held(held)
            return
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

    def _send_now(self, data: bytes, addr: Address) -> None:
        """One ``sendto`` on the socket, whether or not it holds (errors counted)."""
        if self._closed:
            return
        try:
            self._sock.sendto(data, addr)
        except OSError as exc:  # buffer full, unreachable network, ...: UDP may drop
            self.send_errors += 1
            log.debug("sendto %s failed: %s", addr, exc)

    def sendto_ttl(self, data: bytes, addr: Address, ttl: int) -> None:
        """Send one datagram with IP TTL (IPv6 hop limit) ``ttl``, then restore the default.

        For hole-punching openers (``NetworkConfig.punch_ttl``): the socket option is
        set around this one ``sendto`` (the loop is single-threaded, so no other send
        sees it).  Without ``add_reader`` (the transport path sends asynchronously)
        the datagram goes out with the default TTL.
        """
        if self._closed:
            return
        held = self._held
        if held:  # what was held before goes first
            self._held = []
            self._send_held(held)
        if self._transport is not None or not 1 <= ttl <= 255:
            self.sendto(data, addr)
            return
        sock = self._sock
        level, opt = (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) if self._v6 else (socket.IPPROTO_IP, socket.IP_TTL)
        try:
            sock.setsockopt(level, opt, ttl)
        except OSError as exc:  # pragma: no cover - cannot happen for 1..255
            log.debug("cannot set TTL %d: %s", ttl, exc)
            self.sendto(data, addr)
            return
        try:
            sock.sendto(data, addr)
        except OSError as exc:
            self.send_errors += 1
            log.debug("sendto %s failed: %s", addr, exc)
        finally:
            sock.setsockopt(level, opt, -1 if self._v6 else self._default_ttl)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._held = None
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
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # one socket asks for every interface
        for _idx, name in socket.if_nameindex():
            addr = _ipv4_of(name, s)
            if addr and not addr.startswith("127."):
                addrs.append((addr, port))
    return addrs


def _ipv4_of(ifname: str, s: socket.socket) -> str | None:
    import fcntl
    import struct

    try:
        packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", ifname[:15].encode()))  # SIOCGIFADDR
    except OSError:
        return None
    return socket.inet_ntoa(packed[20:24])


class UdpNetwork:
    """The real network: :meth:`bind` opens a UDP socket on the running loop."""

    def wall_clock_offset(self) -> float:
        now = asyncio.get_running_loop().time()
        return time.time() - now  # wall-clock ok: the real network is the clock peers share

    def __init__(self, *, gso: bool = False, gro: bool = True, batch: bool = True) -> None:
        #: Send runs of same-size datagrams in one system call (GSO) where the kernel offers it.
        self.gso = gso
        #: Read several datagrams of one sender at once (GRO) where the kernel offers it.
        self.gro = gro
        #: Send what a socket holds (see :meth:`UdpSocket.hold`) by ``sendmmsg`` where Linux has it.
        self.batch = batch

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
            set_dont_fragment(sock)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise NetworkError(f"cannot bind UDP {host}:{port}: {exc.strerror or exc}") from exc
        sock.setblocking(False)
        gso, gro = enable_offload(sock, gso=self.gso, gro=self.gro)
        try:
            return UdpSocket(sock, loop, receiver, gso=gso, gro=gro, batch=self.batch)
        except NotImplementedError:  # no add_reader (proactor loop): one datagram per callback
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(receiver), sock=sock)
            return UdpSocket(sock, loop, receiver, transport)
