"""CPU per datagram inside aioquic: one client and one server QuicConnection in memory (no I/O).

    python benchmarks/quic_datagram.py [--exchanges 2000] [--repeat 5] [--trees OLD,NEW]
                                       [--profile FILE]

Both connections carry HTTP/3 (aioquic's ``H3Connection``, its control and QPACK streams) and
asgi-p2p's receive-credit hooks (``aioquic_compat.install_receive_credit``), as a node's do.
After the handshake the client makes ``--exchanges`` requests, one at a time: a GET on a new
stream, answered by a 13-byte body; time advances 0.2 ms per step, so ACKs ride with the next
request or response as aioquic's ack delay allows.  The figure is the CPU time
(``time.process_time``) of both sides for the exchanges divided by the datagrams they sent
(about 2 per exchange): the cost of building one datagram and parsing it.

``--trees A,B`` runs each measurement in a subprocess importing ``asgi_p2p`` from each tree in
turn (A, B, A, B, ... alternating, the first of each round rotating), so an old and a new
``aioquic_compat`` are compared under the same load; medians and every run are printed.  A tree
written ``PATH:aioquic-write`` runs with aioquic's own ``_write_application``
(``aioquic_compat.fast_write_application(False)``), to tell that change from the others.

Every row is patched aioquic, by design: each measurement imports ``asgi_p2p``, whose
``aioquic_compat`` changes aioquic on import (``EPOCHS`` cached, aioquic's enums hashed by
identity, its own ``_write_application``); ``:aioquic-write`` takes back only the last.  No row
is bare aioquic (the bare baselines of ``transport.py``, ``handshake.py``, ``http.py`` and
``sim.py`` run in processes that never import asgi_p2p).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import subprocess
import sys
import time

# this folder holds http.py, which would shadow the stdlib `http`: keep it off the path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]
if "--child" not in sys.argv:
    sys.path.insert(0, os.path.dirname(_HERE))


from aioquic.h3.connection import H3Connection  # noqa: E402
from aioquic.h3.events import DataReceived, HeadersReceived  # noqa: E402
from aioquic.quic.configuration import QuicConfiguration  # noqa: E402
from aioquic.quic.connection import QuicConnection  # noqa: E402
from aioquic.quic.packet import pull_quic_header  # noqa: E402

from asgi_p2p import SecretKey  # noqa: E402
from asgi_p2p import aioquic_compat as hooks  # noqa: E402
from asgi_p2p.aioquic_compat import Buffer  # noqa: E402
from asgi_p2p.endpoint.tls import node_certificate  # noqa: E402

CLIENT = ("10.0.0.1", 1000)
SERVER = ("10.0.0.2", 2000)
BODY = b"hello, world\n"
STEP = 0.0002


def _config(is_client: bool, key: SecretKey) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=["h3"],
        certificate=node_certificate(key),
        private_key=key.private_key,
        verify_mode=0,
        max_datagram_size=1200,
    )


class Exchange:
    """A client and a server connection after the handshake, and a clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.datagrams = 0
        self.client = QuicConnection(configuration=_config(True, SecretKey.from_seed("bench-client")))
        hooks.install_receive_credit(self.client, lambda sid: None, lambda received: received + (1 << 20))
        self.client.connect(SERVER, now=self.now)
        first = self.client.datagrams_to_send(self.now)
        header = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8)
        self.server = QuicConnection(
            configuration=_config(False, SecretKey.from_seed("bench-server")),
            original_destination_connection_id=header.destination_cid,
        )
        hooks.install_receive_credit(self.server, lambda sid: None, lambda received: received + (1 << 20))
        for data, _ in first:
            self.server.receive_datagram(data, CLIENT, self.now)
        self.h3c = H3Connection(self.client)
        self.h3s = H3Connection(self.server)
        for _ in range(20):
            self.step()
        self.datagrams = 0

    def step(self) -> bool:
        """One turn: each side sends what it has, the other receives it and answers requests."""
        self.now += STEP
        moved = False
        for data, _ in self.client.datagrams_to_send(self.now):
            self.server.receive_datagram(data, CLIENT, self.now)
            self.datagrams += 1
            moved = True
        while (ev := self.server.next_event()) is not None:
            for h3ev in self.h3s.handle_event(ev):
                if isinstance(h3ev, HeadersReceived) and h3ev.stream_ended:
                    sid = h3ev.stream_id
                    self.h3s.send_headers(sid, [(b":status", b"200"), (b"content-length", b"13")])
                    self.h3s.send_data(sid, BODY, end_stream=True)
        for data, _ in self.server.datagrams_to_send(self.now):
            self.client.receive_datagram(data, SERVER, self.now)
            self.datagrams += 1
            moved = True
        for conn in (self.client, self.server):
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(self.now)
        return moved

    def request(self) -> None:
        sid = self.client.get_next_available_stream_id()
        self.h3c.send_headers(
            sid,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"peer"), (b":path", b"/")],
            end_stream=True,
        )
        for _ in range(50):
            self.step()
            while (ev := self.client.next_event()) is not None:
                for h3ev in self.h3c.handle_event(ev):
                    if isinstance(h3ev, DataReceived) and h3ev.stream_ended:
                        return
        raise RuntimeError("no response")


def measure(exchanges: int, profile: str | None = None) -> tuple[float, float]:
    """(CPU microseconds per datagram, datagrams per exchange)."""
    ex = Exchange()
    for _ in range(50):  # warm up
        ex.request()
    ex.datagrams = 0
    prof = cProfile.Profile(time.process_time) if profile else None
    if prof is not None:
        prof.enable()
    cpu0 = time.process_time()
    for _ in range(exchanges):
        ex.request()
    cpu = time.process_time() - cpu0
    if prof is not None and profile is not None:
        prof.disable()
        prof.dump_stats(profile)
    return cpu / ex.datagrams * 1e6, ex.datagrams / exchanges


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exchanges", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--trees", help="OLD,NEW: asgi-p2p trees to compare, alternating (subprocesses)")
    ap.add_argument("--profile", help="write a cProfile (CPU time) of one measurement to FILE")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--aioquic-write", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.aioquic_write:
            hooks.fast_write_application(False)
        us, per = measure(args.exchanges, args.profile)
        print(f"{us:.3f} {per:.4f}")
        return
    from benchmarks._machine import load_average, machine_description

    print(machine_description())
    trees = args.trees.split(",") if args.trees else [os.path.dirname(_HERE)]
    runs: dict[str, list[float]] = {t: [] for t in trees}
    per_exchange: dict[str, float] = {}
    print(
        "every row imports asgi_p2p, so aioquic is patched in all of them (EPOCHS cached, enums hashed by "
        "identity, asgi-p2p's _write_application); PATH:aioquic-write = aioquic's own _write_application, "
        "the other patches on"
    )
    print(f"load average before: {load_average()}")
    for r in range(args.repeat):
        order = trees[r % len(trees) :] + trees[: r % len(trees)]
        for tree in order:
            path, _, variant = tree.partition(":")
            env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--exchanges", str(args.exchanges)]
            if variant == "aioquic-write":
                cmd.append("--aioquic-write")
            elif variant:
                raise SystemExit(f"unknown variant {variant!r} (PATH or PATH:aioquic-write)")
            if args.profile:
                cmd += ["--profile", f"{args.profile}.{os.path.basename(path)}{variant and '.' + variant}"]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.split()
            runs[tree].append(float(out[0]))
            per_exchange[tree] = float(out[1])
    print(f"load average after: {load_average()}")
    print(f"{'tree':<40} {'median us/datagram':>18} {'datagrams/exchange':>18}  runs")
    for tree in trees:
        vals = runs[tree]
        print(
            f"{tree:<40} {statistics.median(vals):>18.2f} {per_exchange[tree]:>18.3f}  "
            + " ".join(f"{v:.2f}" for v in vals)
        )
    first = trees[0]
    for other in trees[1:]:
        ratios = [y / x for x, y in zip(runs[first], runs[other], strict=True)]
        print(
            f"{other} / {first} per round: median {statistics.median(ratios):.3f} ("
            + " ".join(f"{q:.3f}" for q in ratios)
            + ")"
        )


if __name__ == "__main__":
    main()
