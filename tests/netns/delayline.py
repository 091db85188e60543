"""Userspace delay line: bridges Ethernet frames between two interfaces, each held back by a fixed delay.

Run inside a namespace that owns both interfaces (the kernel here has no ``netem``)::

    python delayline.py IF_A IF_B DELAY_MS [JITTER_MS] [SEED] [MAX_QUEUED]

Every frame that arrives on one interface is sent out of the other ``DELAY_MS`` (+ a uniform
``0..JITTER_MS`` drawn from a generator seeded with ``SEED``) milliseconds later. Jitter may reorder
frames, as on a real path. At most ``MAX_QUEUED`` (default 20000) frames wait; more are dropped and
counted, as are frames the other interface refuses to send. Prints ``ready`` once both sockets are
bound, and a final ``stats forwarded=N dropped=M`` line on SIGTERM.

The line is ``delayline.c``: this script compiles it once (``gcc -O2 -Wall -Werror``) into a cache
keyed by the source's hash (``$XDG_CACHE_HOME/asgi-p2p-rig/`` or ``/tmp/asgi-p2p-rig-<uid>/``) and
execs it, so the process keeps this script's PID. Without ``gcc`` it says so on stderr and runs the
same line in Python below (3 to 4 times the CPU per frame). ``AP2P_RIG_DELAYLINE=python`` forces
the Python line, ``AP2P_RIG_DELAYLINE=c`` fails rather than fall back.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import random
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4
MAX_QUEUED = 20000
SOURCE = Path(__file__).resolve().with_name("delayline.c")
CFLAGS = ("-O2", "-Wall", "-Werror")
ENV = "AP2P_RIG_DELAYLINE"  # "c": the C line or fail; "python": the Python line; unset: C if gcc is there
MAX_FRAME = 65536


def l4_checksum_fixed(frame: bytes) -> bytes:
    """Recompute an IPv4 UDP/TCP checksum: veth leaves it unfinished (checksum offload), and a raw
    socket sends the frame as is, so the receiver would drop it."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return frame
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    total = int.from_bytes(frame[16:18], "big")
    if proto not in (6, 17) or int.from_bytes(frame[20:22], "big") & 0x3FFF or ihl < 20:
        return frame  # not UDP/TCP, a fragment, or a broken header
    start, end = 14 + ihl, 14 + total
    off = start + (6 if proto == 17 else 16)
    if end > len(frame) or off + 2 > end:
        return frame
    if proto == 17 and frame[off : off + 2] == b"\x00\x00":  # UDP without checksum
        return frame
    buf = bytearray(frame)
    buf[off : off + 2] = b"\x00\x00"
    pseudo = frame[26:34] + bytes([0, proto]) + (end - start).to_bytes(2, "big")
    data = pseudo + bytes(buf[start:end])
    if len(data) % 2:
        data += b"\x00"
    total_sum = sum(memoryview(data).cast("H"))
    while total_sum >> 16:
        total_sum = (total_sum & 0xFFFF) + (total_sum >> 16)
    csum = ~total_sum & 0xFFFF
    if csum == 0 and proto == 17:
        csum = 0xFFFF
    buf[off : off + 2] = struct.pack("=H", csum)
    return bytes(buf)


def open_interface(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((name, 0))
    mreq = struct.pack("iHH8s", socket.if_nametoindex(name), PACKET_MR_PROMISC, 0, b"")
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.setblocking(False)
    return sock


def cache_dir() -> Path:
    """Where compiled lines live: private to this user (created 0700; refused if someone else owns it)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    path = Path(xdg) / "asgi-p2p-rig" if xdg else Path(tempfile.gettempdir()) / f"asgi-p2p-rig-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise SystemExit(f"delayline: {path} is not a private directory of this user; remove it")
    return path


def compiled(cc: str) -> Path:
    """The C line's binary, compiled once per source version (temp file + rename: parallel runs are safe)."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((cc, *CFLAGS)).encode()).hexdigest()[:16]
    binary = cache_dir() / f"delayline-{key}"
    if binary.exists():
        return binary
    fd, tmp = tempfile.mkstemp(prefix=f".{binary.name}-", dir=binary.parent)
    os.close(fd)
    try:
        res = subprocess.run([cc, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise SystemExit(f"delayline: {cc} could not compile {SOURCE} ({res.returncode}):\n{res.stderr}")
        os.chmod(tmp, 0o700)
        os.replace(tmp, binary)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return binary


def exec_c_line(argv: list[str]) -> None:
    """Replace this process by the C line (same PID, stdout and signals), unless told or forced not to."""
    choice = os.environ.get(ENV, "")
    if choice not in ("", "c", "python"):
        raise SystemExit(f"delayline: {ENV} must be 'c' or 'python', got {choice!r}")
    if choice == "python":
        return
    cc = shutil.which("gcc")
    if cc is None:
        if choice == "c":
            raise SystemExit(f"delayline: {ENV}=c but gcc is not installed (`make sysdeps` installs it)")
        note = "delayline: gcc not found, running the Python delay line (3 to 4 times the CPU per frame)"
        print(note, file=sys.stderr, flush=True)
        return
    binary = compiled(cc)
    os.execv(binary, [str(binary), *argv])


def main(argv: list[str]) -> int:
    if not 3 <= len(argv) <= 6:
        print(__doc__, file=sys.stderr)
        return 2
    exec_c_line(argv)
    if_a, if_b = argv[0], argv[1]
    try:
        delay_ms = float(argv[2])
        jitter_ms = float(argv[3]) if len(argv) > 3 else 0.0
        seed = int(argv[4]) if len(argv) > 4 else 0
        max_queued = int(argv[5]) if len(argv) > 5 else MAX_QUEUED
    except ValueError:
        max_queued = delay_ms = -1
    if not (0 <= delay_ms <= 3600e3 and 0 <= jitter_ms <= 3600e3 and 1 <= max_queued <= 1_000_000):
        print(
            "delayline: DELAY_MS and JITTER_MS must be numbers in 0..3600000, SEED an integer, "
            f"MAX_QUEUED an integer in 1..1000000; got {argv[2:]}",
            file=sys.stderr,
        )
        return 2
    rng = random.Random(seed)
    a, b = open_interface(if_a), open_interface(if_b)
    peer = {a: b, b: a}
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ)
    sel.register(b, selectors.EVENT_READ)
    queue: list[tuple[float, int, socket.socket, bytes]] = []
    seq = forwarded = dropped = 0
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    wake_r, wake_w = socket.socketpair()  # the signal wakes the select below at once
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    sel.register(wake_r, selectors.EVENT_READ)
    print("ready", flush=True)
    while not stop:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, frame = heapq.heappop(queue)
            try:
                out.send(frame)
                forwarded += 1
            except OSError:  # e.g. a GSO super-frame larger than the MTU: lost, like on a wire
                dropped += 1
        timeout = max(0.0, queue[0][0] - now) if queue else 1.0
        for key, _ in sel.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is wake_r:
                continue
            while True:
                try:
                    frame, addr = sock.recvfrom(MAX_FRAME)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:  # our own transmissions, seen again
                    continue
                if len(queue) >= max_queued:
                    dropped += 1
                    continue
                delay = delay_ms + (rng.uniform(0.0, jitter_ms) if jitter_ms else 0.0)
                seq += 1
                due = time.monotonic() + delay / 1000.0
                heapq.heappush(queue, (due, seq, peer[sock], l4_checksum_fixed(frame)))
    print(f"stats forwarded={forwarded} dropped={dropped}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
