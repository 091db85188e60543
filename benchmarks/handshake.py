"""Handshake cost (issue 11, part 4): asgi-p2p vs bare aioquic, both ends in one process.

N handshakes in a loop on real UDP over 127.0.0.1, client and server on one event
loop, so one CPU clock covers both ends.  Each implementation does the same work
per handshake: mutual Ed25519 TLS (the same ``node_certificate`` certificates,
the server requests the client's), wait until the client holds HANDSHAKE_DONE
(when asgi-p2p's ``connect`` returns), then close.  Prints wall ms and CPU ms
(both ends together) per handshake, interleaved runs, and with ``--profile`` the
top cProfile entries of the asgi-p2p runs (and of bare aioquic's with
``--profile-bare``).

Usage::

    .venv/bin/python benchmarks/handshake.py --handshakes 200 --repeat 5
    .venv/bin/python benchmarks/handshake.py --handshakes 300 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine_description
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration

from asgi_p2p import NetworkConfig, Node, NodeAddr, SecretKey
from asgi_p2p.endpoint.tls import node_certificate

HOST = "127.0.0.1"
ALPN_BARE = "bench/1"


def _bare_config(is_client: bool, key: SecretKey, mds: int) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN_BARE],
        certificate=node_certificate(key),
        private_key=key.private_key,
        verify_mode=0,  # ssl.CERT_NONE
        max_datagram_size=mds,
    )


class _BareServer(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        quic = self._quic
        original = quic._initialize

        def _initialize(peer_cid: bytes) -> None:
            original(peer_cid)
            quic.tls._request_client_certificate = True  # mutual TLS, as asgi-p2p does

        quic._initialize = _initialize  # type: ignore[method-assign]


class _BareClient(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.confirmed: asyncio.Future[None] = self._loop.create_future()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        if not self.confirmed.done() and self._quic._handshake_confirmed:
            self.confirmed.set_result(None)


class _Harness:
    """One implementation's server and client, set up once; :meth:`batch` runs handshakes."""

    def __init__(self) -> None:
        self._closing: set[asyncio.Task[Any]] = set()

    async def setup(self, mds: int) -> None:
        raise NotImplementedError

    async def once(self) -> float:
        """One handshake (timed until the client holds HANDSHAKE_DONE); its close runs in the background."""
        raise NotImplementedError

    async def teardown(self) -> None:
        raise NotImplementedError

    def _close_later(self, close: Any) -> None:
        task = asyncio.ensure_future(close)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def batch(self, n: int) -> tuple[list[float], float]:
        """``n`` handshakes: their wall seconds, and the CPU seconds of the batch (both ends, closes included)."""
        cpu0 = time.process_time()
        walls = [await self.once() for _ in range(n)]
        if self._closing:  # the closes (CONNECTION_CLOSE, the draining period) end inside the batch
            await asyncio.wait(list(self._closing), timeout=10)
        await asyncio.sleep(0.01)  # the server handles the last packets
        return walls, time.process_time() - cpu0


class BareHarness(_Harness):
    async def setup(self, mds: int) -> None:
        self._server = await serve(
            HOST,
            0,
            configuration=_bare_config(False, SecretKey.from_seed("hs-server"), mds),
            create_protocol=_BareServer,
        )
        self._port = self._server._transport.get_extra_info("socket").getsockname()[1]
        self._config = _bare_config(True, SecretKey.from_seed("hs-client"), mds)

    async def once(self) -> float:
        t0 = time.perf_counter()
        cm = connect(HOST, self._port, configuration=self._config, create_protocol=_BareClient)
        proto = await cm.__aenter__()
        assert isinstance(proto, _BareClient)
        await proto.confirmed
        wall = time.perf_counter() - t0
        self._close_later(cm.__aexit__(None, None, None))
        await asyncio.sleep(0)  # the close starts now
        return wall

    async def teardown(self) -> None:
        self._server.close()


class P2PHarness(_Harness):
    async def setup(self, mds: int) -> None:
        config = NetworkConfig.from_env(max_datagram_size=mds, max_probe_datagram_size=0)
        self._server = await Node.bind(SecretKey.from_seed("hs-server"), host=HOST, config=config)
        self._client = await Node.bind(SecretKey.from_seed("hs-client"), host=HOST, config=config)
        self._addr = NodeAddr(self._server.node_id, [self._server.local_address])
        listener = self._server.listen()

        async def drain() -> None:
            while True:
                await listener.accept()  # the client closes it

        self._acceptor = asyncio.create_task(drain())

    async def once(self) -> float:
        t0 = time.perf_counter()
        mc = await self._client.connect(self._addr)  # returns once HANDSHAKE_DONE arrived
        wall = time.perf_counter() - t0
        self._close_later(mc.close())
        await asyncio.sleep(0)  # the close starts now (a closing connection is not reused)
        return wall

    async def teardown(self) -> None:
        self._acceptor.cancel()
        await self._client.close()
        await self._server.close()


IMPLS = ("asgi-p2p", "aioquic")


async def measure(
    n: int, rounds: int, mds: int, profiles: dict[str, cProfile.Profile | None]
) -> dict[str, list[tuple[float, float]]]:
    """Per implementation and round: (median wall ms, CPU ms per handshake), rounds interleaved."""
    harnesses: dict[str, _Harness] = {"asgi-p2p": P2PHarness(), "aioquic": BareHarness()}
    results: dict[str, list[tuple[float, float]]] = {impl: [] for impl in IMPLS}
    for h in harnesses.values():
        await h.setup(mds)
    try:
        for h in harnesses.values():
            await h.batch(3)  # warm-up (imports, caches, first connection)
        for rnd in range(rounds):
            for impl in IMPLS if rnd % 2 == 0 else tuple(reversed(IMPLS)):
                prof = profiles.get(impl)
                if prof is not None:
                    prof.enable()
                try:
                    walls, cpu = await harnesses[impl].batch(n)
                finally:
                    if prof is not None:
                        prof.disable()
                res = (statistics.median(walls) * 1e3, cpu / n * 1e3)
                results[impl].append(res)
                print(f"# round {rnd + 1}/{rounds} {impl}: {res[0]:.2f} ms wall, {res[1]:.2f} ms CPU", file=sys.stderr)
    finally:
        for h in harnesses.values():
            await h.teardown()
    return results


def _top(profile: cProfile.Profile, n_handshakes: int, sort: str, limit: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats(sort).print_stats(limit)
    return f"(totals over {n_handshakes} handshakes)\n" + out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--handshakes", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5, help="interleaved runs of each implementation")
    ap.add_argument("--datagram-size", type=int, default=1200)
    ap.add_argument("--profile", action="store_true", help="cProfile the asgi-p2p runs, print the top entries")
    ap.add_argument("--profile-bare", action="store_true", help="cProfile the bare aioquic runs too")
    ap.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative)")
    ap.add_argument("--limit", type=int, default=40)
    args = ap.parse_args(argv)

    profiles: dict[str, cProfile.Profile | None] = {
        "asgi-p2p": cProfile.Profile() if args.profile else None,
        "aioquic": cProfile.Profile() if args.profile_bare else None,
    }
    results = asyncio.run(measure(args.handshakes, args.repeat, args.datagram_size, profiles))

    def med(impl: str, i: int) -> float:
        return statistics.median(r[i] for r in results[impl])

    def runs(impl: str, i: int) -> str:
        return ", ".join(f"{r[i]:.2f}" for r in results[impl])

    print(f"Machine: {machine_description()}")
    print(
        f"{args.handshakes} handshakes per run, {args.repeat} interleaved runs, datagram size {args.datagram_size}, "
        "client and server in one process on one event loop (CPU = both ends)\n"
    )
    print(
        "| metric | asgi-p2p, median (per run) | aioquic, median (per run) | ratio of medians "
        "| ratio per run: median (min-max) |\n|---|---|---|---|---|"
    )
    for label, i in (("wall ms per handshake (median of the run)", 0), ("CPU ms per handshake, both ends", 1)):
        a, b = med("asgi-p2p", i), med("aioquic", i)
        per_run = [x[i] / y[i] for x, y in zip(results["asgi-p2p"], results["aioquic"], strict=True)]
        print(
            f"| {label} | {a:.2f} ({runs('asgi-p2p', i)}) | {b:.2f} ({runs('aioquic', i)}) | {a / b:.2f}x "
            f"| {statistics.median(per_run):.2f}x ({min(per_run):.2f}-{max(per_run):.2f}) |"
        )
    for impl, prof in profiles.items():
        if prof is not None:
            print(f"\n## cProfile, {impl}, sorted by {args.sort}\n")
            print(_top(prof, args.handshakes * args.repeat, args.sort, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
