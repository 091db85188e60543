"""Sending a transmit pass's datagrams to many peers: a ``sendto`` each, or one ``sendmmsg``?

    python benchmarks/sendmmsg.py [--repeat 5] [--rounds 2000] [--datagrams 100] [--size 1200]

Python 3.11's socket module has no ``sendmmsg``; the only way to it from the standard library
is ctypes.  This measures, on 127.0.0.1, the CPU time per datagram of sending ``--datagrams``
datagrams of ``--size`` bytes to as many different local ports (one datagram each, as a
server's transmit pass over 100 peers with one request each produces), three ways:

* ``sendto``: a loop of ``socket.sendto(data, addr)`` (what ``UdpSocket.sendto`` does);
* ``sendmmsg, ctypes structs``: one ``sendmmsg`` through ctypes, the ``mmsghdr`` / ``iovec``
  arrays filled field by field from ctypes structures, each destination's ``sockaddr_in``
  built once and cached (as a library would);
* ``sendmmsg, packed``: the same call with the arrays packed by one precompiled ``struct``
  per call into a preallocated buffer, the payloads joined into one buffer (one copy) so
  that only one pointer has to be taken from Python: the cheapest way to build them found.

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


def sendto_loop(sock: socket.socket) -> Callable[[Sequence[tuple[bytes, Address]]], int]:
    sendto = sock.sendto

    def send(datagrams: Sequence[tuple[bytes, Address]]) -> int:
        for data, addr in datagrams:
            sendto(data, addr)
        return len(datagrams)

    return send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--datagrams", type=int, default=100)
    parser.add_argument("--size", type=int, default=1200)
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        parser.error("Linux only (sendmmsg)")
    if args.repeat < 1 or args.rounds < 1 or not 1 <= args.datagrams <= 1024 or not 1 <= args.size <= 65000:
        parser.error("--repeat and --rounds at least 1, --datagrams 1-1024, --size 1-65000")
    print(f"Machine: {machine_description()}", flush=True)
    receivers = []
    for _ in range(args.datagrams):
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        r.bind(("127.0.0.1", 0))
        r.setblocking(False)
        receivers.append(r)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sender.bind(("127.0.0.1", 0))
    sender.setblocking(False)
    batch = [(os.urandom(args.size), r.getsockname()) for r in receivers]
    variants: dict[str, Callable[[Sequence[tuple[bytes, Address]]], int]] = {
        "sendto": sendto_loop(sender),
        "sendmmsg, ctypes structs": StructSender(sender, args.datagrams).send,
        "sendmmsg, packed": PackedSender(sender, args.datagrams).send,
    }
    names = list(variants)

    def drain() -> int:
        got = 0
        for r in receivers:
            while True:
                try:
                    data = r.recv(65535)
                except BlockingIOError:
                    break
                assert len(data) == args.size
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
                if sent != len(batch):
                    raise SystemExit(f"{name}: {sent} of {len(batch)} sent ({os.strerror(ctypes.get_errno())})")
                got = drain()
                if got != len(batch):
                    raise SystemExit(f"{name}: {got} of {len(batch)} datagrams arrived")
        for name in names:
            runs[name].append(spent[name] / (args.rounds * args.datagrams) * 1e6)
        print(f"run {rep + 1}/{args.repeat} (load {load_average()})", file=sys.stderr)
    base = statistics.median(runs["sendto"])
    print(
        f"\n{args.datagrams} datagrams of {args.size} bytes to {args.datagrams} ports on 127.0.0.1 per batch, "
        f"{args.rounds} batches per run, {args.repeat} runs; load at the end: {load_average()}\n"
    )
    print("| how | CPU µs per datagram, median (runs) | vs sendto |")
    print("|---|---|---|")
    for name in names:
        med = statistics.median(runs[name])
        per_run = " / ".join(f"{v:.2f}" for v in runs[name])
        print(f"| {name} | {med:.2f} ({per_run}) | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
