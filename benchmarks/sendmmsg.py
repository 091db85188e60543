"""Sending a transmit pass's datagrams to many peers: a ``sendto`` each, or one ``sendmmsg``?

    python benchmarks/sendmmsg.py [--repeat 5] [--rounds 2000] [--datagrams 100,16,4] [--size 1200]

Python 3.11's socket module has no ``sendmmsg``; the only way to it from the standard library
is ctypes.  This measures, on 127.0.0.1, the CPU time per datagram of sending batches of
``--datagrams`` datagrams of ``--size`` bytes to as many different local ports (one datagram
each, as a server's transmit pass over 100 peers with one request each produces; smaller
batches, as a pass under less load does), five ways:

* ``sendto``: a loop of ``socket.sendto(data, addr)`` (what ``UdpSocket.sendto`` does);
* ``sendmmsg, ctypes structs``: one ``sendmmsg`` through ctypes, the ``mmsghdr`` / ``iovec``
  arrays filled field by field from ctypes structures, each destination's ``sockaddr_in``
  built once and cached (as a library would);
* ``sendmmsg, packed``: the same call with the arrays packed by one precompiled ``struct``
  per call into a preallocated buffer, the payloads joined into one buffer (one copy) so
  that only one pointer has to be taken from Python: the cheapest way to build them found;
* ``sendmmsg, constant fields written once``: the headers' constant fields (each message's
  sockaddr slot, iovec, lengths) written when the sender is made; per call only the
  destinations (cached ``sockaddr`` bytes joined and copied with one ``memmove``) and the
  iovecs (one ``pack_into``) are written;
* ``sendmmsg, arrays prebuilt``: the system call alone, its arrays built once before the
  clock starts (a lower bound no library reaches: a pass's datagrams change every time).

Both sendmmsg variants include building their arrays (the cost a library pays per pass).
Each round sends one batch with every variant (the order rotating), timed with
``time.process_time`` (this process's CPU, user + system: loopback delivery runs in the
sender's system call); the receiving sockets are drained between batches, untimed.  Every
datagram is checked to arrive.  Prints medians per datagram over ``--repeat`` runs of
``--rounds`` rounds each, and every run's value.  Linux only.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from benchmarks._machine import load_average, machine_description  # noqa: E402

Address = tuple[str, int]
Batch = Sequence[tuple[bytes, Address]]


class _SockaddrIn(ctypes.Structure):
    _fields_ = [
        ("sin_family", ctypes.c_ushort),
        ("sin_port", ctypes.c_uint16),
        ("sin_addr", ctypes.c_uint8 * 4),
        ("sin_zero", ctypes.c_uint8 * 8),
    ]


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_MSG_DONTWAIT = 0x40


def _sockaddr(addr: Address) -> _SockaddrIn:
    sa = _SockaddrIn()
    sa.sin_family = socket.AF_INET
    sa.sin_port = socket.htons(addr[1])
    sa.sin_addr[:] = socket.inet_aton(addr[0])
    return sa


class StructSender:
    """sendmmsg with ctypes arrays filled field by field (sockaddrs cached per address)."""

    def __init__(self, sock: socket.socket, most: int) -> None:
        self.fd = sock.fileno()
        self.msgs = (_Mmsghdr * most)()
        self.iovs = (_Iovec * most)()
        self.names: dict[Address, tuple[_SockaddrIn, int]] = {}

    def send(self, datagrams: Sequence[tuple[bytes, Address]]) -> int:
        msgs, iovs, names = self.msgs, self.iovs, self.names
        keep = []
        for i, (data, addr) in enumerate(datagrams):
            name = names.get(addr)
            if name is None:
                sa = _sockaddr(addr)
                name = names[addr] = (sa, ctypes.addressof(sa))
            buf = ctypes.c_char_p(data)
            keep.append(buf)
            iov = iovs[i]
            iov.iov_base = ctypes.cast(buf, ctypes.c_void_p)
            iov.iov_len = len(data)
            hdr = msgs[i].msg_hdr
            hdr.msg_name = name[1]
            hdr.msg_namelen = 16
            hdr.msg_iov = ctypes.pointer(iov)
            hdr.msg_iovlen = 1
        return int(_sendmmsg(self.fd, msgs, len(datagrams), _MSG_DONTWAIT))


class PackedSender:
    """sendmmsg with the arrays packed by one struct call into a preallocated buffer."""

    _MMSG = "PI4xPQPQi4xI4x"  # msghdr (56 bytes) + msg_len + padding: 64 bytes
    _IOV = "PQ"

    def __init__(self, sock: socket.socket, most: int) -> None:
        assert struct.calcsize(self._MMSG) == ctypes.sizeof(_Mmsghdr) == 64
        self.fd = sock.fileno()
        self.most = most
        self.msgs = ctypes.create_string_buffer(64 * most)
        self.msgs_at = ctypes.addressof(self.msgs)
        self.iovs = ctypes.create_string_buffer(16 * most)
        self.iovs_at = ctypes.addressof(self.iovs)
        self.names: dict[Address, int] = {}
        self._keep: list[object] = []
        self.packers: dict[int, tuple[struct.Struct, struct.Struct]] = {}

    def _packers(self, n: int) -> tuple[struct.Struct, struct.Struct]:
        p = self.packers.get(n)
        if p is None:
            p = self.packers[n] = (struct.Struct(self._MMSG * n), struct.Struct(self._IOV * n))
        return p

    def send(self, datagrams: Sequence[tuple[bytes, Address]]) -> int:
        n = len(datagrams)
        names = self.names
        joined = b"".join([d for d, _ in datagrams])
        base = ctypes.cast(ctypes.c_char_p(joined), ctypes.c_void_p).value or 0
        mm, iv = self._packers(n)
        iov_args: list[int] = []
        msg_args: list[int] = []
        offset = 0
        iov_at = self.iovs_at
        for data, addr in datagrams:
            name = names.get(addr)
            if name is None:
                sa = _sockaddr(addr)
                self._keep.append(sa)
                name = names[addr] = ctypes.addressof(sa)
            size = len(data)
            iov_args += (base + offset, size)
            msg_args += (name, 16, iov_at, 1, 0, 0, 0, 0)
            offset += size
            iov_at += 16
        iv.pack_into(self.iovs, 0, *iov_args)
        mm.pack_into(self.msgs, 0, *msg_args)
        sent = int(_sendmmsg(self.fd, self.msgs_at, n, _MSG_DONTWAIT))
        del joined
        return sent


class SlotSender:
    """sendmmsg with every constant header field written once: per call only the destinations
    (cached sockaddr bytes, joined and copied in one ``memmove``) and the iovecs (one
    ``pack_into``) are written; the payloads are joined into one buffer (one copy)."""

    def __init__(self, sock: socket.socket, most: int) -> None:
        self.fd = sock.fileno()
        self.msgs = ctypes.create_string_buffer(64 * most)
        self.msgs_at = ctypes.addressof(self.msgs)
        self.iovs = ctypes.create_string_buffer(16 * most)
        iovs_at = ctypes.addressof(self.iovs)
        self.names = ctypes.create_string_buffer(16 * most)
        self.names_at = ctypes.addressof(self.names)
        hdr = struct.Struct(PackedSender._MMSG)
        for i in range(most):
            hdr.pack_into(self.msgs, 64 * i, self.names_at + 16 * i, 16, iovs_at + 16 * i, 1, 0, 0, 0, 0)
        self.cache: dict[Address, bytes] = {}
        self.iov_packers: dict[int, struct.Struct] = {}

    def send(self, datagrams: Sequence[tuple[bytes, Address]]) -> int:
        n = len(datagrams)
        cache = self.cache
        names = []
        payloads = []
        for data, addr in datagrams:
            name = cache.get(addr)
            if name is None:
                name = cache[addr] = bytes(_sockaddr(addr))
            names.append(name)
            payloads.append(data)
        ctypes.memmove(self.names_at, b"".join(names), 16 * n)
        joined = b"".join(payloads)
        at = ctypes.cast(ctypes.c_char_p(joined), ctypes.c_void_p).value or 0
        flat: list[int] = []
        for data in payloads:
            size = len(data)
            flat += (at, size)
            at += size
        packer = self.iov_packers.get(n)
        if packer is None:
            packer = self.iov_packers[n] = struct.Struct("PQ" * n)
        packer.pack_into(self.iovs, 0, *flat)
        return int(_sendmmsg(self.fd, self.msgs_at, n, _MSG_DONTWAIT))


def prebuilt(sock: socket.socket, batch: Sequence[tuple[bytes, Address]]) -> Callable[[Batch], int]:
    """sendmmsg of arrays built once, before the clock starts: the system call alone (a lower
    bound no library reaches: its datagrams and destinations change every pass)."""
    packed = PackedSender(sock, len(batch))
    joined = b"".join([d for d, _ in batch])
    base = ctypes.cast(ctypes.c_char_p(joined), ctypes.c_void_p).value or 0
    mm, iv = packed._packers(len(batch))
    iov_args: list[int] = []
    msg_args: list[int] = []
    offset = 0
    for i, (data, addr) in enumerate(batch):
        sa = _sockaddr(addr)
        packed._keep.append(sa)
        iov_args += (base + offset, len(data))
        msg_args += (ctypes.addressof(sa), 16, packed.iovs_at + 16 * i, 1, 0, 0, 0, 0)
        offset += len(data)
    iv.pack_into(packed.iovs, 0, *iov_args)
    mm.pack_into(packed.msgs, 0, *msg_args)
    fd, msgs, n = packed.fd, packed.msgs_at, len(batch)

    def send(datagrams: Sequence[tuple[bytes, Address]]) -> int:
        assert joined and packed.msgs  # the buffers stay alive with the closure
        return int(_sendmmsg(fd, msgs, n, _MSG_DONTWAIT))

    return send


def sendto_loop(sock: socket.socket) -> Callable[[Sequence[tuple[bytes, Address]]], int]:
    sendto = sock.sendto

    def send(datagrams: Sequence[tuple[bytes, Address]]) -> int:
        for data, addr in datagrams:
            sendto(data, addr)
        return len(datagrams)

    return send


def measure(
    batch: Batch, receivers: list[socket.socket], sender: socket.socket, args: argparse.Namespace
) -> dict[str, list[float]]:
    """Per variant, each run's CPU µs per datagram of sending ``batch``."""
    n = len(batch)
    variants: dict[str, Callable[[Batch], int]] = {
        "sendto": sendto_loop(sender),
        "sendmmsg, ctypes structs": StructSender(sender, n).send,
        "sendmmsg, packed": PackedSender(sender, n).send,
        "sendmmsg, constant fields written once": SlotSender(sender, n).send,
        "sendmmsg, arrays prebuilt (the system call alone)": prebuilt(sender, batch),
    }
    names = list(variants)

    def drain() -> int:
        got = 0
        for r in receivers:
            while True:
                try:
                    r.recv(65535)
                except BlockingIOError:
                    break
                got += 1
        return got

    runs: dict[str, list[float]] = {name: [] for name in names}
    clock = time.process_time
    for rep in range(args.repeat):
        spent = dict.fromkeys(names, 0.0)
        for rnd in range(args.rounds):
            k = rnd % len(names)
            for name in names[k:] + names[:k]:
                send = variants[name]
                t0 = clock()
                sent = send(batch)
                spent[name] += clock() - t0
                if sent != n:
                    raise SystemExit(f"{name}: {sent} of {n} sent ({os.strerror(ctypes.get_errno())})")
                got = drain()
                if got != n:
                    raise SystemExit(f"{name}: {got} of {n} datagrams arrived")
        for name in names:
            runs[name].append(spent[name] / (args.rounds * n) * 1e6)
        print(f"{n} datagrams: run {rep + 1}/{args.repeat} (load {load_average()})", file=sys.stderr)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--datagrams", default="100,16,4", help="datagrams per batch (comma-separated sizes)")
    parser.add_argument("--size", type=int, default=1200)
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        parser.error("Linux only (sendmmsg)")
    try:
        counts = [int(c) for c in args.datagrams.split(",")]
    except ValueError:
        parser.error("--datagrams: comma-separated numbers")
    if args.repeat < 1 or args.rounds < 1 or not all(1 <= c <= 1024 for c in counts) or not 1 <= args.size <= 65000:
        parser.error("--repeat and --rounds at least 1, --datagrams 1-1024 each, --size 1-65000")
    print(f"Machine: {machine_description()}", flush=True)
    receivers = []
    for _ in range(max(counts)):
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        r.bind(("127.0.0.1", 0))
        r.setblocking(False)
        receivers.append(r)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sender.bind(("127.0.0.1", 0))
    sender.setblocking(False)
    payload = os.urandom(args.size)
    results = {}
    for n in counts:
        batch = [(payload[:-1] + bytes([i % 256]), r.getsockname()) for i, r in enumerate(receivers[:n])]
        results[n] = measure(batch, receivers[:n], sender, args)
    print(
        f"\nDatagrams of {args.size} bytes, each batch to as many ports on 127.0.0.1, {args.rounds} batches per run, "
        f"{args.repeat} runs, variants interleaved; load at the end: {load_average()}\n"
    )
    print("| datagrams per batch | how | CPU µs per datagram, median (runs) | vs sendto |")
    print("|---|---|---|---|")
    for n, runs in results.items():
        base = statistics.median(runs["sendto"])
        for name, values in runs.items():
            med = statistics.median(values)
            per_run = " / ".join(f"{v:.2f}" for v in values)
            print(f"| {n} | {name} | {med:.2f} ({per_run}) | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
