"""Tiny UDP tools run as separate processes inside the rig's namespaces (stdlib only).

    udptool.py reflect PORT [PORT ...]             WHO -> "SEEN ip:port"; ECHO x -> ECHO x;
                                                   DATA tag i -> counted; COUNT tag -> "COUNT tag n"
    udptool.py mapping PORT TARGET [TARGET ...]    print {"local": PORT, "seen": {TARGET: "ip:port"}}
    udptool.py rtt PORT TARGET N                   print {"rtts_ms": [...]}
    udptool.py blast PORT TARGET N TAG [SIZE]      send N DATA packets (padded to SIZE bytes), print
                                                   {"sent": N, "received": k, "elapsed": seconds sending}
    udptool.py punch PORT REFLECTOR SECS [MODE]    print "mapped ip:port", read "ip:port" of the peer from
                                                   stdin, send PUNCH probes to it; print
                                                   {"heard": bool, "peer_heard": bool, "from": [...]}
                                                   MODE adapt: answer wherever probes come from;
                                                   MODE ttl: first send 2 probes with TTL 2, print
                                                   "primed", wait for "go" on stdin, then punch
    udptool.py trap PORT                           print "ready"; read "ip:port" from stdin, send to it
                                                   until an ICMP error comes back ("refused"); then
                                                   print "from ip:port" of the first datagram received

TARGET and REFLECTOR are "ip:port". Results are one JSON line on stdout.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time

IP_RECVERR = 11
SO_RCVBUFFORCE = 33
Addr = tuple[str, int]


def parse(addr: str) -> Addr:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def fmt(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"


def bound(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # root may exceed net.core.rmem_max: a stalled reader must not add loss of its own
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))
    return sock


def recv(sock: socket.socket, timeout: float) -> tuple[bytes, Addr] | None:
    ready, _, _ = select.select([sock], [], [], max(0.0, timeout))
    if not ready:
        return None
    data, addr = sock.recvfrom(65535)
    return data, addr


def ask(sock: socket.socket, target: Addr, msg: bytes, want: bytes, tries: int = 25) -> bytes:
    """Send ``msg`` until a reply starting with ``want`` arrives from ``target`` (packets may be lost)."""
    for _ in range(tries):
        sock.sendto(msg, target)
        deadline = time.monotonic() + 0.2
        while (got := recv(sock, deadline - time.monotonic())) is not None:
            data, addr = got
            if addr == target and data.startswith(want):
                return data
    raise SystemExit(f"no {want!r} reply from {fmt(target)} after {tries} tries")


def reflect(ports: list[int]) -> None:
    socks = [bound(p) for p in ports]
    counts: dict[bytes, int] = {}
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select(socks, [], [])
        for sock in ready:
            data, addr = sock.recvfrom(65535)
            if data.startswith(b"WHO"):
                sock.sendto(b"SEEN " + fmt(addr).encode(), addr)
            elif data.startswith(b"ECHO"):
                sock.sendto(data, addr)
            elif data.startswith(b"DATA "):
                tag = data.split()[1]
                if tag in counts or len(counts) < 1000:
                    counts[tag] = counts.get(tag, 0) + 1
            elif data.startswith(b"COUNT "):
                tag = data.split()[1]
                sock.sendto(b"COUNT %s %d" % (tag, counts.get(tag, 0)), addr)


def mapping(port: int, targets: list[str]) -> None:
    sock = bound(port)
    seen = {t: ask(sock, parse(t), b"WHO", b"SEEN ").split()[1].decode() for t in targets}
    print(json.dumps({"local": sock.getsockname()[1], "seen": seen}), flush=True)


def rtt(port: int, target: str, n: int) -> None:
    sock, dst = bound(port), parse(target)
    rtts = []
    for i in range(n):
        msg = b"ECHO %d" % i
        start = time.monotonic()
        ask(sock, dst, msg, msg)
        rtts.append((time.monotonic() - start) * 1000.0)
    print(json.dumps({"rtts_ms": rtts}), flush=True)


def blast(port: int, target: str, n: int, tag: str, size: int) -> None:
    sock, dst = bound(port), parse(target)
    start = time.monotonic()
    for i in range(n):
        sock.sendto((b"DATA %s %d " % (tag.encode(), i)).ljust(size, b"x"), dst)
        if i % 25 == 24:  # pace so no socket buffer on the way overflows: count only the rig's loss
            time.sleep(0.002)
    elapsed = time.monotonic() - start
    time.sleep(0.05)  # let the last packets drain through any delay line before asking
    reply = ask(sock, dst, b"COUNT " + tag.encode(), b"COUNT ", tries=50)
    print(json.dumps({"sent": n, "received": int(reply.split()[2]), "elapsed": elapsed}), flush=True)


def punch(port: int, reflector: str, secs: float, mode: str) -> None:
    sock = bound(port)
    mapped = ask(sock, parse(reflector), b"WHO", b"SEEN ").split()[1].decode()
    print("mapped", mapped, flush=True)
    target = parse(sys.stdin.readline().strip())
    adapt = mode == "adapt"
    if mode == "ttl":  # open our own router's mapping with probes that expire in the core
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 2)
        for _ in range(2):
            sock.sendto(b"PUNCH 0", target)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
        print("primed", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("expected 'go'")
    heard = peer_heard = False
    sources: list[str] = []
    deadline = time.monotonic() + secs
    done_at: float | None = None
    next_send = 0.0
    while time.monotonic() < deadline and (done_at is None or time.monotonic() < done_at):
        now = time.monotonic()
        if now >= next_send:
            sock.sendto(b"PUNCH %d" % heard, target)
            next_send = now + 0.02
        got = recv(sock, next_send - time.monotonic())
        if got is None or not got[0].startswith(b"PUNCH"):
            continue
        data, addr = got
        heard = True
        peer_heard = peer_heard or data == b"PUNCH 1"
        if fmt(addr) not in sources:
            sources.append(fmt(addr))
        if adapt:
            target = addr
        if peer_heard and done_at is None:
            done_at = time.monotonic() + 0.3  # keep sending so the peer hears that we heard it
    print(json.dumps({"heard": heard, "peer_heard": peer_heard, "from": sources}), flush=True)


def trap(port: int) -> None:
    sock = bound(port)
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    print("ready", flush=True)
    target = parse(sys.stdin.readline().strip())
    for _ in range(50):
        sock.sendto(b"POKE", target)
        try:
            if recv(sock, 0.1) is not None:
                raise SystemExit("unexpected reply to POKE")
        except ConnectionRefusedError:
            break
    else:
        raise SystemExit(f"no ICMP error from {fmt(target)}")
    print("refused", flush=True)
    while True:
        try:
            _, addr = sock.recvfrom(65535)
        except ConnectionRefusedError:
            continue
        print("from", fmt(addr), flush=True)
        return


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd == "reflect":
        reflect([int(p) for p in args])
    elif cmd == "mapping":
        mapping(int(args[0]), args[1:])
    elif cmd == "rtt":
        rtt(int(args[0]), args[1], int(args[2]))
    elif cmd == "blast":
        blast(int(args[0]), args[1], int(args[2]), args[3], int(args[4]) if len(args) > 4 else 0)
    elif cmd == "punch":
        punch(int(args[0]), args[1], float(args[2]), args[3] if len(args) > 3 else "-")
    elif cmd == "trap":
        trap(int(args[0]))
    else:
        raise SystemExit(f"unknown command {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv[1:])
